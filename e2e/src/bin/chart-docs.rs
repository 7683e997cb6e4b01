//! `make chart-docs`: rewrites the values table in helm/sidetrace/README.md from the comments in
//! helm/sidetrace/values.yaml (see `sidetrace_e2e::chartdocs`). `--check` only says whether the
//! README is current (exit 1 when it is not), as the drift test does.

use std::path::Path;
use std::process::ExitCode;

use sidetrace_e2e::chartdocs::{render_readme, values_table};

fn main() -> ExitCode {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/sidetrace");
    let check = std::env::args().any(|a| a == "--check");
    let result = (|| -> Result<bool, String> {
        let values =
            std::fs::read_to_string(chart.join("values.yaml")).map_err(|e| e.to_string())?;
        let readme_path = chart.join("README.md");
        let readme = std::fs::read_to_string(&readme_path).map_err(|e| e.to_string())?;
        let new = render_readme(&readme, &values_table(&values)?)?;
        if new == readme {
            return Ok(true);
        }
        if !check {
            std::fs::write(&readme_path, new).map_err(|e| e.to_string())?;
            eprintln!("wrote {}", readme_path.display());
        }
        Ok(!check)
    })();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("helm/sidetrace/README.md is out of date: run `make chart-docs`");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("chart-docs: {e}");
            ExitCode::from(64)
        }
    }
}
