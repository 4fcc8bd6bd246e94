//! `vswitch-agent`: keeps a node's vswitch programmed with the cluster's Services. It watches
//! Services and EndpointSlices from the Kubernetes API server (in-cluster config, or
//! `--kubeconfig`), and after each change hands the whole set to the switch as `vswitch ctl
//! import` does, over the control socket. The watches are kube-runtime's: a broken watch is
//! resumed from its last resourceVersion, a `410 Gone` (or any desync) re-lists, errors back
//! off. The switch is the one that translates (it knows its pod subnet): the agent only
//! mirrors the API objects.
#![deny(unsafe_code)]

mod ctl;
mod list;
mod sync;

use clap::Parser;
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "vswitch-agent", version, about)]
pub struct Args {
    /// A kubeconfig file; without it, the in-cluster config (the pod's service account).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The switch's control socket.
    #[arg(long, default_value = "/run/vswitch/vswitch.sock")]
    ctl: PathBuf,
    /// Changes that arrive within this many milliseconds go in one import.
    #[arg(long, default_value_t = 200)]
    debounce_ms: u64,
    /// Import again after this many seconds without a change (a restarted switch gets its
    /// services back), and retry a failed import after one second.
    #[arg(long, default_value_t = 60)]
    resync_s: u64,
    /// Exit after this many successful imports (for tests).
    #[arg(long, hide = true)]
    max_imports: Option<u64>,
}

async fn client(args: &Args) -> Result<kube::Client, String> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => kube::Config::incluster()
            .map_err(|e| format!("not in a cluster ({e}); give --kubeconfig PATH"))?,
    };
    kube::Client::try_from(config).map_err(|e| format!("API client: {e}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if args.debounce_ms > 60_000 || args.resync_s == 0 {
        eprintln!("vswitch-agent: --debounce-ms at most 60000, --resync-s at least 1");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vswitch-agent: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let client = client(&args).await?;
        sync::run(
            client,
            sync::Options {
                ctl: args.ctl.clone(),
                debounce: Duration::from_millis(args.debounce_ms),
                resync: Duration::from_secs(args.resync_s),
                max_imports: args.max_imports,
            },
        )
        .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vswitch-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
