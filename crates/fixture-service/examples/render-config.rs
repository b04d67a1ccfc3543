//! Writes the config files service-config renders for a service, for the image smoke test
//! (deploy/images/smoke) and for trying the fixture by hand. Both managed roles get the
//! same credentials here.
//!
//!   cargo run -p fixture-service --example render-config -- --type mcp --out DIR \
//!     --host db1:5432 --host db2:5432 --dbname app --user u --password p \
//!     --target-session-attrs primary --listen-port 8080 [--config '{"allow_writes":true}'] \
//!     [--ca fleet-ca.crt]

use std::path::PathBuf;

use clap::Parser;
use service_config::{ConnectionTarget, Credentials};
use spec::ServiceType;

#[derive(Parser)]
struct Args {
    #[arg(long = "type")]
    service_type: String,
    #[arg(long)]
    out: PathBuf,
    /// host:port, in the order the service should try them.
    #[arg(long = "host", required = true)]
    hosts: Vec<String>,
    #[arg(long)]
    dbname: String,
    #[arg(long)]
    user: String,
    #[arg(long)]
    password: String,
    #[arg(long, default_value = "any")]
    target_session_attrs: String,
    #[arg(long)]
    listen_port: u16,
    /// The service's config object, as JSON.
    #[arg(long, default_value = "{}")]
    config: String,
    /// The fleet CA (PEM file): rendered as ca.crt, and the service connects with
    /// sslmode=verify-full against it.
    #[arg(long)]
    ca: Option<PathBuf>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let service_type =
        ServiceType::parse(&args.service_type).ok_or("--type: mcp, rag or postgrest")?;
    let mut hosts = Vec::new();
    for h in &args.hosts {
        let (host, port) = h
            .rsplit_once(':')
            .ok_or_else(|| format!("--host {h}: expected host:port"))?;
        hosts.push((host.to_owned(), port.parse()?));
    }
    let config: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&args.config)?;
    let ca_pem = match &args.ca {
        Some(path) => Some(
            std::fs::read_to_string(path).map_err(|e| format!("--ca {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let creds = Credentials {
        username: args.user,
        password: args.password,
    };
    let target = ConnectionTarget {
        hosts,
        dbname: args.dbname,
        target_session_attrs: args.target_session_attrs,
        ca_pem,
    };
    std::fs::create_dir_all(&args.out)?;
    for f in service_config::render(
        service_type,
        &config,
        &creds,
        &creds,
        &target,
        args.listen_port,
    ) {
        std::fs::write(args.out.join(&f.path), &f.content)?;
        println!("{}", args.out.join(&f.path).display());
    }
    Ok(())
}
