//! Writes the TracedService CRD YAML to the paths given (or stdout). `make crds` runs it.

use std::io::Write;

fn main() -> std::io::Result<()> {
    let yaml = sidetrace_crds::crd_yaml();
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        std::io::stdout().write_all(yaml.as_bytes())?;
    }
    for path in paths {
        std::fs::write(&path, &yaml)?;
        eprintln!("wrote {path}");
    }
    Ok(())
}
