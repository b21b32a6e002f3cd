//! Edge: hand nft text to the kernel. [`Apply`] is the seam; [`NftCli`] runs `nft -f -` (optionally
//! inside a network namespace, for tests), [`RecordingApply`] is the fake.
//!
//! One call = one `nft -f -` process = one atomic netlink batch: either the whole transaction
//! applies or none of it does (service-proxy.md §2.5 step 6).

use std::io::Write as _;
use std::process::{Command, ExitStatus, Stdio};

use crate::render;

/// Errors running an nft transaction.
///
/// Retry: the sync loop keeps the previous ruleset in force (the transaction is atomic), logs the
/// error with nft's stderr, and retries with a backoff (1 s doubling to 30 s) or on the next change.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `nft` (or `ip netns exec`) process could not be started or talked to.
    #[error("cannot run {program}")]
    SpawnFailed {
        /// The program started.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// nft rejected the transaction; nothing was changed.
    #[error("nft transaction failed ({status}): {stderr}")]
    NftTransactionFailed {
        /// nft's exit status.
        status: ExitStatus,
        /// nft's stderr, trimmed (names the offending line).
        stderr: String,
    },
    /// A fake was told to fail.
    #[error("injected failure")]
    Injected,
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Something that can run one nft transaction (the full text of `nft -f -` input).
pub trait Apply {
    /// Runs `nft_text` as one atomic transaction.
    fn apply(&mut self, nft_text: &str) -> Result<()>;
}

/// The real thing: the `nft` binary, fed on stdin.
#[derive(Clone, Debug, Default)]
pub struct NftCli {
    /// Run inside this named network namespace (`ip netns exec NAME nft …`); `None` = our own.
    netns: Option<String>,
}

impl NftCli {
    /// `nft` in the current network namespace.
    pub fn new() -> Self {
        NftCli { netns: None }
    }

    /// `nft` inside network namespace `name` (as created by `ip netns add`), for lab tests.
    pub fn in_netns(name: impl Into<String>) -> Self {
        NftCli {
            netns: Some(name.into()),
        }
    }

    /// Deletes table `ip drawbridge` if it exists (`--cleanup`); no error when it is absent.
    pub fn delete_table(&self) -> Result<()> {
        self.run(&["-f", "-"], Some(&render::cleanup_transaction()))
            .map(drop)
    }

    /// `nft list table ip drawbridge` (what the kernel holds now).
    pub fn list_table(&self) -> Result<String> {
        self.run(&["list", "table", render::FAMILY, render::TABLE], None)
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let output = run_program(self.netns.as_deref(), "nft", args, stdin).map_err(|source| {
            Error::SpawnFailed {
                program: match &self.netns {
                    Some(_) => "ip netns exec nft".to_string(),
                    None => "nft".to_string(),
                },
                source,
            }
        })?;
        if !output.status.success() {
            return Err(Error::NftTransactionFailed {
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Apply for NftCli {
    fn apply(&mut self, nft_text: &str) -> Result<()> {
        self.run(&["-f", "-"], Some(nft_text)).map(drop)
    }
}

/// Runs `program args…` (inside network namespace `netns` via `ip netns exec` when given), feeding
/// `stdin` from a helper thread so a chatty child cannot deadlock on full pipes; collects stdout
/// and stderr. Shared by the nft and iptables edges.
///
/// # Errors
/// The process could not be started or waited for. A non-zero exit is *not* an error here.
pub(crate) fn run_program(
    netns: Option<&str>,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> std::io::Result<std::process::Output> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns, program]);
            cmd
        }
        None => Command::new(program),
    };
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    std::thread::scope(|scope| {
        let writer = child.stdin.take().map(|mut pipe| {
            let text = stdin.unwrap_or_default();
            scope.spawn(move || pipe.write_all(text.as_bytes()))
        });
        let output = child.wait_with_output();
        if let Some(writer) = writer {
            // A write error (the child exited early) shows up as the child's own failure.
            let _ = writer.join();
        }
        output
    })
}

/// Test fake: records every transaction it is given; can be told to fail the next N calls.
#[derive(Clone, Debug, Default)]
pub struct RecordingApply {
    /// Every transaction received, in order (failed ones included).
    pub transactions: Vec<String>,
    /// How many upcoming calls fail with [`Error::Injected`].
    pub fail_next: usize,
}

impl Apply for RecordingApply {
    fn apply(&mut self, nft_text: &str) -> Result<()> {
        self.transactions.push(nft_text.to_string());
        if self.fail_next > 0 {
            self.fail_next -= 1;
            return Err(Error::Injected);
        }
        Ok(())
    }
}
