//! A registry token service, as Docker Hub, GHCR and GitLab run one: `GET /token?scope=...`
//! with HTTP basic credentials answers `{"token": JWT}` (ES256, signed by a key whose
//! self-signed certificate the registry trusts, carried in the header's `x5c`), and 401 to
//! anything else. docker-registry's `auth: token:` checks those tokens for real.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::TcpListener,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use hivemind_agent::net::netns::NetnsGuard;
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair},
};

use crate::Netns;

pub const SERVICE: &str = "hivemind-test-registry";
pub const ISSUER: &str = "hivemind-test-token-issuer";

#[derive(Debug)]
pub struct TokenServer {
    /// The signing key's certificate: the registry's `rootcertbundle`.
    pub bundle: PathBuf,
    /// `http://ADDR/token`: the registry's `realm`.
    pub realm: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TokenServer {
    /// Serves on `addr` inside `netns`, granting what is asked to `user` with `password`.
    pub fn start_in(netns: &Netns, addr: &str, user: &str, password: &str) -> Self {
        let dir = tempfile::tempdir().expect("token dir");
        let key = rcgen::KeyPair::generate().expect("signing key");
        let cert = rcgen::CertificateParams::new(vec!["token-signer".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("signing certificate");
        let bundle = dir.path().join("token-signer.pem");
        std::fs::write(&bundle, cert.pem()).expect("write bundle");
        let signer = Signer {
            key: EcdsaKeyPair::from_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &key.serialize_der(),
                &SystemRandom::new(),
            )
            .expect("ring key"),
            x5c: base64::engine::general_purpose::STANDARD.encode(cert.der()),
        };
        let expected = format!(
            "basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let path = PathBuf::from(netns.path());
        let listen = addr.to_owned();
        let user = user.to_owned();
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let _inside = NetnsGuard::enter(&path).expect("enter the namespace");
            let listener = TcpListener::bind(&listen).expect("bind the token server");
            listener.set_nonblocking(true).expect("nonblocking");
            ready_tx.send(()).expect("ready");
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        serve(stream, &signer, &expected, &user);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        ready_rx.recv().expect("token server started");
        Self {
            bundle,
            realm: format!("http://{addr}/token"),
            stop,
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// The registry config's `auth:` section for this service.
    pub fn registry_auth(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.realm,
            display(&self.bundle)
        )
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Signer {
    key: EcdsaKeyPair,
    x5c: String,
}

/// One request: a token for the asked scope if the credentials are right, else 401.
fn serve(mut stream: std::net::TcpStream, signer: &Signer, expected: &str, user: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut authorized = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
            && value.trim().eq_ignore_ascii_case(expected)
        {
            authorized = true;
        }
    }
    let response = if authorized {
        let scope = query_param(&request_line, "scope").unwrap_or_default();
        let body = format!(r#"{{"token":"{}"}}"#, signer.token(user, &scope));
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#;
        format!(
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let _ = stream.write_all(response.as_bytes());
}

/// `name`'s value in the request line's query, percent-decoded (scopes carry `:` and `,`).
fn query_param(request_line: &str, name: &str) -> Option<String> {
    let target = request_line.split_whitespace().nth(1)?;
    let (_, query) = target.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                if let Ok(b) = u8::from_str_radix(hex, 16) {
                    out.push(b);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Signer {
    /// A JWT granting `scope` (`repository:NAME:ACTIONS`) to `user`.
    fn token(&self, user: &str, scope: &str) -> String {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let access = match scope.splitn(3, ':').collect::<Vec<_>>().as_slice() {
            [kind, name, actions] => serde_json::json!([{
                "type": kind,
                "name": name,
                "actions": actions.split(',').collect::<Vec<_>>(),
            }]),
            _ => serde_json::json!([]),
        };
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [self.x5c]});
        let claims = serde_json::json!({
            "iss": ISSUER,
            "sub": user,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": format!("{now}-{}", std::process::id()),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .expect("sign");
        format!("{signing_input}.{}", b64(signature.as_ref()))
    }
}
