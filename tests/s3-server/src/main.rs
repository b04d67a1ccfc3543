//! `berth-s3-server`: a real S3 implementation for tests, not a mock. The S3 logic is the
//! `s3s-fs` crate's (objects are files under `--root`, buckets its subdirectories); this
//! program only serves it over HTTPS, because pgBackRest speaks nothing else to S3.
//!
//! Requests are path-style (`https://ADDR/BUCKET/KEY`, pgBackRest's
//! `repo1-s3-uri-style=path`): no virtual-host domain is configured, so s3s reads the bucket
//! from the path. Every request must be signed (SigV4) with `--access-key` and the secret
//! key from `BERTH_S3_SECRET_KEY`, which is read from the environment so that it never shows
//! in `ps` and is never logged, and signed for `--region`. Where s3s-fs answers otherwise
//! than S3 does in a way pgBackRest notices, `access` answers first (see there).
//!
//! Once bound it prints exactly one line, `listening on ADDR:PORT`, to stdout (with port 0
//! the parent learns the chosen port from it); logs go to stderr (`BERTH_LOG`, default
//! `warn,rustls=error`: pgBackRest sends the endpoint IP as SNI, which rustls warns of on
//! every connection). It serves until SIGTERM or SIGINT. Tests and benchmarks start it
//! through this package's library (`s3_server::Launch`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Parser;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_rustls::TlsAcceptor;

use s3_server::SECRET_ENV;

mod access;

#[derive(Debug, Parser)]
#[command(about = "s3s-fs over HTTPS, for tests")]
struct Args {
    /// Directory holding the data; created if missing. Each subdirectory is a bucket.
    #[arg(long)]
    root: PathBuf,
    /// Address to listen on, ADDR:PORT; port 0 picks a free one.
    #[arg(long)]
    listen: SocketAddr,
    /// The server's certificate chain (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long)]
    key: PathBuf,
    /// Access key id clients sign with.
    #[arg(long)]
    access_key: String,
    /// The server's region: requests signed for another are refused, as by real S3.
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// A bucket to create at start if missing (repeatable).
    #[arg(long = "bucket")]
    buckets: Vec<String>,
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
                .unwrap_or_else(|_| "warn,rustls=error".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let secret = match std::env::var(SECRET_ENV) {
        Ok(s) if !s.is_empty() => s,
        _ => fail(&format!("{SECRET_ENV} must hold the secret key")),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&format!("start the runtime: {e}")));
    if let Err(e) = runtime.block_on(run(args, secret)) {
        fail(&e);
    }
}

fn fail(message: &str) -> ! {
    eprintln!("berth-s3-server: {message}");
    std::process::exit(1);
}

async fn run(args: Args, secret: String) -> Result<(), String> {
    std::fs::create_dir_all(&args.root)
        .map_err(|e| format!("create {}: {e}", args.root.display()))?;
    for bucket in &args.buckets {
        // A bucket name is one path segment; anything else would land outside the root.
        if bucket.is_empty() || bucket.contains(['/', '\\']) || bucket.starts_with('.') {
            return Err(format!("{bucket:?} is not a bucket name"));
        }
        let dir = args.root.join(bucket);
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let fs = s3s_fs::FileSystem::new(&args.root)
        .map_err(|e| format!("open {}: {e:?}", args.root.display()))?;
    let service = {
        let mut b = S3ServiceBuilder::new(fs);
        b.set_auth(SimpleAuth::from_single(args.access_key.clone(), secret));
        b.set_access(access::Checks {
            region: args.region.clone(),
            root: args.root.clone(),
        });
        b.build()
    };
    let tls = TlsAcceptor::from(Arc::new(tls_config(&args.cert, &args.key)?));

    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("listen on {}: {e}", args.listen))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("local address: {e}"))?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {bound}")
            .and_then(|()| out.flush())
            .map_err(|e| format!("write to stdout: {e}"))?;
    }
    tracing::info!(%bound, region = %args.region, root = %args.root.display(), "serving");

    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT: {e}"))?;
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // E.g. out of file descriptors: the next accept may work again.
                    tracing::warn!("accept: {e}");
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let tls = tls.clone();
        let service = service.clone();
        tokio::spawn(async move {
            let stream = match tls.accept(socket).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%peer, "TLS handshake: {e}");
                    return;
                }
            };
            if let Err(e) = ConnBuilder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, "connection: {e}");
            }
        });
    }
    // A test tool: connections still open are dropped with the runtime, not drained.
    tracing::info!("stopping on signal");
    Ok(())
}

/// TLS 1.2 and 1.3 with ring (the workspace's provider), HTTP/1.1 only: what pgBackRest
/// speaks.
fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("read certificates from {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("read a private key from {}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
    .map_err(|e| format!("TLS configuration: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
