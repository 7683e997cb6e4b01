//! Process exit codes shared by every sidetrace binary, so that an operator reading a pod's
//! last state tells bad configuration (fix the flags, restarting will not help) from a failure
//! at run time (a restart may).

/// Bad usage or configuration (sysexits' EX_USAGE): unknown flags, invalid values, unusable
/// files named by flags.
pub const USAGE: i32 = 64;

/// A failure after the configuration was accepted (API unreachable, port in use, lost lease).
pub const FAILURE: i32 = 1;
