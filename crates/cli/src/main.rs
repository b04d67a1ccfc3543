use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match berth_cli::args::parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are answers, not errors; a wrong command line exits 3
            // (not clap's 2, which means a canceled task here).
            return if e.use_stderr() {
                ExitCode::from(berth_cli::error::Exit::Refused.code())
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(berth_cli::error::Exit::Unreachable.code());
        }
    };
    let exit = runtime.block_on(berth_cli::main(cli));
    ExitCode::from(exit.code())
}
