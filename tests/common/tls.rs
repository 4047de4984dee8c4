//! TLS test material: a throwaway CA that issues server and client certificates
//! (rcgen, written as PEM into the test's own temp dir), and a real TLS client
//! (python's `ssl`, OpenSSL underneath) driven line by line, which keeps its session
//! between connections so that resumption can be watched.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SignatureAlgorithm,
};
use time::OffsetDateTime;

/// A CA and the directory its certificates are written to.
pub struct Pki {
    pub dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    pub ca: PathBuf,
}

/// A certificate and its key, as files.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pair {
    /// The `[listen.tls]` lines that serve this pair.
    pub fn tls_table(&self, extra: &str) -> String {
        format!(
            "[listen.tls]\ncert = \"{}\"\nkey = \"{}\"\n{extra}",
            self.cert.display(),
            self.key.display()
        )
    }
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("corral-pki-")
            .tempdir()
            .expect("temp dir");
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "corral test CA");
        let cert = params.self_signed(&key).expect("CA cert");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.pem()).expect("write CA");
        Pki {
            dir,
            issuer: Issuer::new(params, key),
            ca,
        }
    }

    /// A server certificate for `names` (subjectAltName; CN = the first), ECDSA P-256
    /// unless `alg` says otherwise, valid for `days` from now (negative: expired).
    pub fn server(
        &self,
        file: &str,
        names: &[&str],
        alg: Option<&'static SignatureAlgorithm>,
        days: i64,
    ) -> Pair {
        self.issue(file, names, alg, days, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate with CN `name`.
    pub fn client(&self, file: &str, name: &str) -> Pair {
        self.issue(file, &[name], None, 30, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(
        &self,
        file: &str,
        names: &[&str],
        alg: Option<&'static SignatureAlgorithm>,
        days: i64,
        usage: ExtendedKeyUsagePurpose,
    ) -> Pair {
        let key = match alg {
            Some(a) => KeyPair::generate_for(a).expect("key"),
            None => KeyPair::generate().expect("key"),
        };
        let owned: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(owned).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("x"));
        params.extended_key_usages = vec![usage];
        let now = OffsetDateTime::now_utc();
        if days < 0 {
            params.not_before = now - time::Duration::days(-days + 30);
        } else {
            params.not_before = now - time::Duration::days(1);
        }
        params.not_after = now + time::Duration::days(days);
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let pair = Pair {
            cert: self.dir.path().join(format!("{file}.pem")),
            key: self.dir.path().join(format!("{file}.key")),
        };
        write_atomically(&pair.cert, cert.pem().as_bytes());
        write_atomically(&pair.key, key.serialize_pem().as_bytes());
        pair
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Writes `bytes` to a temp file beside `path` and renames it over, as a certificate
/// renewal tool does (a reader never sees half a file).
pub fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// One answer of the python client (`error` is read through `Debug`, in a failing
/// test's message).
#[allow(dead_code)]
#[derive(Debug, serde::Deserialize)]
pub struct Answer {
    pub ok: bool,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub reused: bool,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub reply: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

/// The python `ssl` client (tests/common/tls_client.py), one process kept for a
/// test so that it keeps its session between connections; killed on drop.
pub struct PyTls {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl PyTls {
    pub fn start(port: u16, ca: &Path, name: &str, min: &str, max: &str) -> PyTls {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/tls_client.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["127.0.0.1", &port.to_string()])
            .arg(ca)
            .args([name, min, max])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs");
        let stdin = child.stdin.take().expect("stdin");
        let stdout: ChildStdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        PyTls {
            child,
            stdin,
            lines,
        }
    }

    /// Sends one command and waits (at most 20 s) for its answer.
    pub fn ask(&mut self, cmd: &str) -> Answer {
        writeln!(self.stdin, "{cmd}").expect("python client alive");
        self.stdin.flush().expect("flush");
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no answer from the python TLS client to `{cmd}`"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad answer {line:?}: {e}"))
    }
}

impl Drop for PyTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command with a deadline; (exit code or -1, stdout, stderr).
pub fn run(cmd: &mut Command, timeout: Duration) -> (i32, String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdin.take());
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// True if `cmd` is on PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A rustls client that trusts the test CA only.
pub fn rustls_client(ca: &std::path::Path) -> Arc<rustls::ClientConfig> {
    rustls_client_versions(ca, rustls::DEFAULT_VERSIONS)
}

/// `rustls_client` speaking only `versions`.
pub fn rustls_client_versions(
    ca: &std::path::Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// Reads one HTTP response (head and `Content-Length` body) from `s`: its status
/// code and whether the server closes after it.
pub fn read_response(s: &mut impl Read) -> std::io::Result<(u16, bool)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let code = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok((code, head.contains("connection: close")))
}

/// HTTPS keep-alive clients (rustls), each keeping its connection until the server
/// says `Connection: close`, then opening another; every request is checked.
pub struct HttpsLoad {
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// Requests answered 200.
    pub ok: Arc<std::sync::atomic::AtomicU64>,
    /// Requests that failed (an error, or another status).
    pub failed: Arc<std::sync::atomic::AtomicU64>,
    /// TLS connections opened (each a handshake).
    pub handshakes: Arc<std::sync::atomic::AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl HttpsLoad {
    pub fn start(port: u16, config: Arc<rustls::ClientConfig>, clients: usize) -> HttpsLoad {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let handshakes = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for _ in 0..clients {
            let (config, stop, ok, failed, handshakes) = (
                config.clone(),
                stop.clone(),
                ok.clone(),
                failed.clone(),
                handshakes.clone(),
            );
            threads.push(std::thread::spawn(move || {
                let deadline = std::time::Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
                    let Ok(sock) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    sock.set_read_timeout(Some(Duration::from_secs(10)))
                        .unwrap();
                    handshakes.fetch_add(1, Ordering::Relaxed);
                    let mut s = rustls::StreamOwned::new(conn, sock);
                    while !stop.load(Ordering::Relaxed) {
                        let req = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
                        match s.write_all(req).and_then(|_| read_response(&mut s)) {
                            Ok((200, close)) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                if close {
                                    break;
                                }
                            }
                            other => {
                                eprintln!("request failed: {other:?}");
                                failed.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }
            }));
        }
        HttpsLoad {
            stop,
            ok,
            failed,
            handshakes,
            threads,
        }
    }

    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until `more` requests beyond now were answered.
    pub fn progress(&self, more: u64, timeout: Duration) -> bool {
        let from = self.answered();
        super::wait_until(timeout, || self.answered() >= from + more)
    }

    /// Stops the clients; (answered, failed, handshakes).
    pub fn finish(self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.handshakes.load(Ordering::Relaxed),
        )
    }
}
