//! berth-fixture-service: a TEST FIXTURE standing in for the mcp, rag and postgrest images.
//! See the library docs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use spec::ServiceType;

/// TEST FIXTURE standing in for the mcp, rag and postgrest images, which cannot be fetched
/// here. It is none of those services: it reads the config berth rendered for TYPE,
/// connects to Postgres with it like libpq would (multi-host, target_session_attrs,
/// sslmode=verify-full against the rendered sslrootcert), and
/// serves GET /health (200 while the connection answers, else 503) and GET /config; as
/// postgrest also GET /TABLE, the table's rows read as the anonymous role.
#[derive(Parser)]
#[command(name = "berth-fixture-service", version)]
struct Args {
    /// Which image to stand in for: mcp, rag or postgrest.
    #[arg(long = "type", env = "BERTH_SERVICE_TYPE", value_parser = parse_type, required_unless_present = "probe")]
    service_type: Option<ServiceType>,
    /// Directory holding the rendered config file(s).
    #[arg(long, env = "BERTH_CONFIG_DIR", default_value = service_config::DEFAULT_CONFIG_DIR)]
    config_dir: PathBuf,
    /// Health-check mode: GET this URL, exit 0 on 200 and 1 otherwise.
    #[arg(long, value_name = "URL")]
    probe: Option<String>,
}

fn parse_type(s: &str) -> Result<ServiceType, String> {
    ServiceType::parse(s).ok_or_else(|| format!("expected mcp, rag or postgrest, got {s:?}"))
}

async fn shutdown_signal() {
    // As PID 1 in a container, SIGTERM is ignored unless handled, and `docker stop` would
    // wait out its timeout.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(url) = args.probe {
        return match fixture_service::probe::probe(&url).await {
            Ok((200, _)) => ExitCode::SUCCESS,
            Ok((code, body)) => {
                println!("{url}: {code} {body}");
                ExitCode::FAILURE
            }
            Err(e) => {
                println!("{url}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        // Container logs are read as text; colour codes would only garble them.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let service_type = args
        .service_type
        .expect("clap requires --type without --probe");
    let started = async {
        let conn = fixture_service::load_config(service_type, &args.config_dir)?;
        let api = fixture_service::load_api(service_type, &args.config_dir)?;
        let tls = fixture_service::connect::Tls::from_connection(&conn, &args.config_dir)?;
        let listener = fixture_service::bind(conn.listen_port).await?;
        tracing::info!(
            r#type = service_type.as_str(),
            config_dir = %args.config_dir.display(),
            port = conn.listen_port,
            hosts = ?conn.hosts,
            target_session_attrs = %conn.target_session_attrs,
            sslmode = %conn.sslmode,
            "test fixture started"
        );
        Ok::<_, fixture_service::StartError>((conn, api, tls, listener))
    };
    let (conn, api, tls, listener) = match started.await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match fixture_service::run(service_type, conn, api, tls, listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("serving: {e}");
            ExitCode::FAILURE
        }
    }
}
