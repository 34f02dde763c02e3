//! Before a scenario: the TLS client configuration, and the bench's user accounts and
//! their tokens (registered and logged in once over HTTPS, cached in a file).

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

use crate::net::{Handler, Kind, Net, Out, Target};

/// Builds the target: the server's certificate from a PEM file is the only trust root,
/// the name checked is `server_name`, no session resumption (every handshake is full).
/// `kx` restricts the key exchange groups (e.g. `x25519`, the group both chatd and the
/// Node.js reference support) or keeps rustls's default order (`default`).
pub fn target(addr: &str, ca: &Path, server_name: &str, kx: &str) -> Result<Target, String> {
    let addr: SocketAddr = addr
        .to_socket_addrs()
        .map_err(|e| format!("--addr {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("--addr {addr}: no address"))?;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if kx != "default" {
        provider
            .kx_groups
            .retain(|g| format!("{:?}", g.name()).eq_ignore_ascii_case(kx));
        if provider.kx_groups.is_empty() {
            return Err(format!(
                "--kx {kx}: unknown group (try x25519, secp256r1, X25519MLKEM768 or default)"
            ));
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server_name = ServerName::try_from(server_name.to_string())
        .map_err(|e| format!("--server-name {server_name}: {e}"))?;
    Ok(Target {
        addr,
        tls: Arc::new(config),
        server_name,
        host: format!("localhost:{}", addr.port()),
    })
}

pub fn username(i: usize) -> String {
    format!("bench_u{i}")
}

pub fn password(i: usize) -> String {
    format!("bench-password-{i}")
}

pub fn login_request(host: &str, i: usize) -> Vec<u8> {
    let body = json!({"username": username(i), "password": password(i)}).to_string();
    crate::http::post_json("/login", host, &body)
}

fn register_request(host: &str, i: usize) -> Vec<u8> {
    let body = json!({"username": username(i), "password": password(i)}).to_string();
    crate::http::post_json("/register", host, &body)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Register,
    Login,
}

/// Registers and logs in users over a few keep-alive connections.
struct Accounts {
    host: String,
    users: usize,
    next_user: usize,
    busy: HashMap<usize, (usize, Step)>,
    tokens: Vec<Option<String>>,
    /// Requests refused with 429, to send again at the given time.
    retry: Vec<(Instant, usize, Vec<u8>)>,
    error: Option<String>,
}

impl Accounts {
    fn next_for(&mut self, id: usize, out: &mut Out<'_>) {
        if self.next_user < self.users {
            let user = self.next_user;
            self.next_user += 1;
            self.busy.insert(id, (user, Step::Register));
            out.raw(&register_request(&self.host, user));
        } else {
            self.busy.remove(&id);
        }
    }
}

impl Handler for Accounts {
    fn on_open(&mut self, _: usize, _: u64, _: u64, _: &mut Out<'_>) {}
    fn on_text(&mut self, _: usize, _: &[u8], _: u64, _: &mut Out<'_>) {}

    fn on_response(&mut self, id: usize, status: u16, body: &[u8], _now: u64, out: &mut Out<'_>) {
        let Some(&(user, step)) = self.busy.get(&id) else {
            return;
        };
        match (step, status) {
            (Step::Register, 201 | 409) => {
                self.busy.insert(id, (user, Step::Login));
                out.raw(&login_request(&self.host, user));
            }
            (Step::Login, 200) => {
                let token = serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|v| v["token"].as_str().map(String::from));
                match token {
                    Some(token) => self.tokens[user] = Some(token),
                    None => self.error = Some("login answer without a token".into()),
                }
                self.next_for(id, out);
            }
            (_, 429) => {
                let request = match step {
                    Step::Register => register_request(&self.host, user),
                    Step::Login => login_request(&self.host, user),
                };
                let at = Instant::now() + Duration::from_millis(500);
                self.retry.push((at, id, request));
            }
            _ => {
                self.error = Some(format!(
                    "{step:?} of {} answered {status}: {}",
                    username(user),
                    String::from_utf8_lossy(body)
                ));
            }
        }
    }

    fn on_closed(&mut self, id: usize, reason: &str) {
        if self.busy.contains_key(&id) {
            self.error = Some(format!("account connection closed: {reason}"));
        }
    }
}

/// Tokens for users 0..users: from the cache file when it holds enough, otherwise by
/// registering (or finding existing) accounts and logging in, then caching them.
pub fn tokens(
    target: &Target,
    base: Instant,
    users: usize,
    cache: Option<&Path>,
) -> Result<Vec<String>, String> {
    if let Some(path) = cache
        && let Ok(text) = std::fs::read_to_string(path)
        && let Ok(Value::Array(cached)) = serde_json::from_str::<Value>(&text)
        && cached.len() >= users
    {
        let tokens: Vec<String> = cached
            .iter()
            .take(users)
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        if tokens.len() == users {
            return Ok(tokens);
        }
    }
    let started = Instant::now();
    let mut net = Net::new(target.clone(), base).map_err(|e| e.to_string())?;
    let mut accounts = Accounts {
        host: target.host.clone(),
        users,
        next_user: 0,
        busy: HashMap::new(),
        tokens: vec![None; users],
        retry: Vec::new(),
        error: None,
    };
    // argon2 runs on the server's one thread: a few connections keep it busy.
    for _ in 0..users.min(4) {
        let user = accounts.next_user;
        accounts.next_user += 1;
        let id = net
            .connect(Kind::Http, &register_request(&target.host, user))
            .map_err(|e| format!("connect: {e}"))?;
        accounts.busy.insert(id, (user, Step::Register));
    }
    let deadline = Instant::now() + Duration::from_secs(60 + users as u64);
    while accounts.tokens.iter().any(Option::is_none) {
        if let Some(e) = accounts.error.take() {
            return Err(e);
        }
        if Instant::now() > deadline {
            return Err("accounts not ready in time".into());
        }
        let now = Instant::now();
        let due: Vec<(usize, Vec<u8>)> = accounts
            .retry
            .iter()
            .filter(|(at, _, _)| *at <= now)
            .map(|(_, id, r)| (*id, r.clone()))
            .collect();
        accounts.retry.retain(|(at, _, _)| *at > now);
        for (id, request) in due {
            net.send_raw(id, &request);
        }
        net.turn(&mut accounts, Duration::from_millis(20))
            .map_err(|e| e.to_string())?;
    }
    let tokens: Vec<String> = accounts.tokens.into_iter().flatten().collect();
    eprintln!(
        "chatbench: {users} accounts ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = cache {
        let text = serde_json::to_string(&tokens).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(tokens)
}
