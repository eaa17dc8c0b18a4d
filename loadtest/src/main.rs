//! `vitalgate-loadtest`: the load-test harness.
//!
//! Not built yet: it exits with status 2 and says so, rather than printing figures
//! it did not measure.

fn main() {
    eprintln!("vitalgate-loadtest: the load-test harness is not implemented yet");
    std::process::exit(2);
}
