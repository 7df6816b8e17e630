//! Test helpers for the OpenID Connect modules: signing keys made in the test (ECDSA
//! P-256 by `rcgen`), and a tiny provider on 127.0.0.1:0 serving discovery, a JWKS, a
//! token and a revocation endpoint, counting hits and recording what it was sent.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::config::{BaseUrl, UpstreamConfig};
use crate::upstream::HttpClient;

pub const CLIENT_ID: &str = "shop-client";

/// The pooled client as the app builds it, with short timeouts.
pub fn client() -> HttpClient {
    let config = UpstreamConfig {
        base: BaseUrl {
            scheme: http::uri::Scheme::HTTP,
            authority: http::uri::Authority::from_static("127.0.0.1:9"),
            path: String::new(),
        },
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        ca_file: None,
        pool_idle_timeout: Duration::from_secs(5),
        pool_max_idle_per_host: 4,
        protocol: crate::config::UpstreamProtocol::Http1,
    };
    crate::upstream::build_client(&config).expect("a client")
}

/// An ECDSA P-256 signing key with its `kid`.
pub struct TestKey {
    kid: String,
    encoding: EncodingKey,
    x: String,
    y: String,
}

impl TestKey {
    pub fn generate(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate().expect("a P-256 key");
        let raw = pair.public_key_raw().to_vec();
        // An uncompressed point: 0x04 || x || y.
        let point = &raw[raw.len() - 65..];
        assert_eq!(point[0], 4);
        Self {
            kid: kid.to_string(),
            encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
            x: URL_SAFE_NO_PAD.encode(&point[1..33]),
            y: URL_SAFE_NO_PAD.encode(&point[33..]),
        }
    }

    pub fn jwk(&self) -> Value {
        json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid, "x": self.x, "y": self.y})
    }

    pub fn sign(&self, claims: &Value) -> String {
        let header = Header { kid: Some(self.kid.clone()), ..Header::new(Algorithm::ES256) };
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signed")
    }

    pub fn sign_with_typ(&self, claims: &Value, typ: &str) -> String {
        let header =
            Header { kid: Some(self.kid.clone()), typ: Some(typ.into()), ..Header::new(Algorithm::ES256) };
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signed")
    }
}

/// A token with the given raw header and an empty signature.
pub fn unsigned(header: &str, claims: &Value) -> String {
    format!("{}.{}.", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims.to_string()))
}

/// What the provider was sent.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub authorization: Option<String>,
    pub body: String,
}

#[derive(Default)]
struct State {
    issuer: String,
    keys: Value,
    hits: HashMap<String, usize>,
    fail_discovery: usize,
    answers: HashMap<String, VecDeque<(StatusCode, String)>>,
    recorded: Vec<Recorded>,
}

/// A provider on 127.0.0.1:0.
#[derive(Clone)]
pub struct Provider {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Provider {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("an address");
        let state = Arc::new(Mutex::new(State {
            issuer: format!("http://{addr}"),
            keys: json!({"keys": []}),
            ..State::default()
        }));
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |request| answer(Arc::clone(&state), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state }
    }

    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn jwks_uri(&self) -> Uri {
        format!("{}/jwks", self.issuer()).parse().expect("a URI")
    }

    pub fn set_keys(&self, keys: &[&TestKey]) {
        self.state.lock().unwrap().keys =
            json!({"keys": keys.iter().map(|key| key.jwk()).collect::<Vec<_>>()});
    }

    /// The next `count` discovery requests answer 503.
    pub fn fail_discovery(&self, count: usize) {
        self.state.lock().unwrap().fail_discovery = count;
    }

    /// Queues an answer for the next request to `path`.
    pub fn answer(&self, path: &str, status: StatusCode, body: &str) {
        let mut state = self.state.lock().unwrap();
        state.answers.entry(path.to_string()).or_default().push_back((status, body.to_string()));
    }

    pub fn hits(&self, path: &str) -> usize {
        self.state.lock().unwrap().hits.get(path).copied().unwrap_or(0)
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().recorded.clone()
    }

    pub fn document(&self) -> Value {
        let issuer = self.issuer();
        json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/authorize"),
            "token_endpoint": format!("{issuer}/token"),
            "revocation_endpoint": format!("{issuer}/revoke"),
            "end_session_endpoint": format!("{issuer}/logout"),
            "jwks_uri": format!("{issuer}/jwks"),
            "id_token_signing_alg_values_supported": ["ES256", "RS256"],
            "backchannel_logout_supported": true,
            "backchannel_logout_session_supported": true,
            "code_challenge_methods_supported": ["S256"]
        })
    }
}

async fn answer(
    state: Arc<Mutex<State>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_string();
    let authorization =
        request.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let (status, text) = {
        let mut state = state.lock().unwrap();
        *state.hits.entry(path.clone()).or_default() += 1;
        state.recorded.push(Recorded {
            path: path.clone(),
            authorization,
            body: String::from_utf8_lossy(&body).into(),
        });
        if let Some(queued) = state.answers.get_mut(&path).and_then(VecDeque::pop_front) {
            queued
        } else {
            match path.as_str() {
                "/.well-known/openid-configuration" if state.fail_discovery > 0 => {
                    state.fail_discovery -= 1;
                    (StatusCode::SERVICE_UNAVAILABLE, String::new())
                }
                "/.well-known/openid-configuration" => {
                    let provider = Provider {
                        addr: state.issuer[7..].parse().expect("an address"),
                        state: Arc::default(),
                    };
                    (StatusCode::OK, provider.document().to_string())
                }
                "/jwks" => (StatusCode::OK, state.keys.to_string()),
                "/revoke" => (StatusCode::OK, String::new()),
                _ => (StatusCode::NOT_FOUND, String::new()),
            }
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    Ok(response)
}
