//! The JWT check: a token and a clock in, claims or a refusal out.
//!
//! Input: a mode byte, then raw token text or, in structured mode, a header (any `alg`,
//! with or without `typ` and extra fields), claims of every type (numeric or not
//! subjects, missing claims, far expiries), a signer (chatd's key, another key, no
//! signature, garbage) and a tampering step (a claim or the header changed after
//! signing, a signature bit flipped or cut, a segment added).
//! Checked, independently of the library: a token that verifies, or is refused only as
//! expired, is three segments whose signature is the HMAC-SHA256 of the first two under
//! chatd's key, with `alg` HS256. A token chatd's key signed, untampered and well
//! formed verifies to exactly its claims until `exp`, then is expired.

use arbitrary::{Arbitrary, Unstructured};
use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chatd::auth::token::MAX_EXP_SECS;
use chatd::auth::{Claims, TokenError, Tokens};
use serde_json::{Value, json};

/// chatd's key in this target.
const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

pub fn check(data: &[u8]) {
    let [mode, rest @ ..] = data else {
        return;
    };
    let tokens = Tokens::new(KEY, 3600);
    if mode % 2 == 0 {
        let token = String::from_utf8_lossy(rest);
        let now = 1_700_000_000;
        let result = tokens.verify(&token, now);
        check_signature_rule(&token, &result);
        return;
    }
    let Ok(generated) = Generated::arbitrary_take_rest(Unstructured::new(rest)) else {
        return;
    };
    let (token, expected) = generated.build();
    let result = tokens.verify(&token, generated.now);
    check_signature_rule(&token, &result);
    if let Some(claims) = expected {
        // An expiry no clock reaches (past 9999, or before 1970) is refused outright.
        let want = if !(0..=MAX_EXP_SECS).contains(&claims.exp) {
            Err(TokenError::Invalid)
        } else if generated.now >= claims.exp {
            Err(TokenError::Expired)
        } else {
            Ok(claims)
        };
        assert_eq!(result, want, "{token}");
    }
}

/// Accepted (or refused only for its age) means signed with chatd's key, as HS256.
fn check_signature_rule(token: &str, result: &Result<Claims, TokenError>) {
    if result == &Err(TokenError::Invalid) {
        return;
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, signature] = parts[..] else {
        panic!(
            "{result:?} for a token of {} segments: {token}",
            parts.len()
        );
    };
    let signature = URL_SAFE_NO_PAD.decode(signature).unwrap_or_else(|e| {
        panic!("{result:?} for a signature that is not base64url ({e}): {token}")
    });
    let key = hmac::Key::new(hmac::HMAC_SHA256, KEY);
    assert!(
        hmac::verify(&key, format!("{header}.{payload}").as_bytes(), &signature).is_ok(),
        "{result:?} for a token not signed with the key: {token}"
    );
    let header: Value = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .unwrap_or_else(|| panic!("{result:?} with an unreadable header: {token}"));
    assert_eq!(header["alg"], "HS256", "{result:?}: {token}");
}

#[derive(Debug, Arbitrary)]
struct Generated {
    alg: Alg,
    typ: bool,
    extra_header: Option<(String, String)>,
    sub: Sub,
    name: Option<String>,
    iat: i64,
    /// `exp` relative to `now` (or missing, or a string).
    exp: Exp,
    jti: Option<String>,
    ver: Option<i64>,
    extra_claim: Option<(String, i64)>,
    signer: Signer,
    tamper: Tamper,
    now: i64,
}

#[derive(Debug, Arbitrary)]
enum Alg {
    Hs256,
    Hs384,
    Hs512,
    None,
    NoneCapitalised,
    Rs256,
    Es256,
    Other(String),
}

#[derive(Debug, Arbitrary)]
enum Sub {
    Id(i64),
    Text(String),
    Number(i64),
    Missing,
}

#[derive(Debug, Arbitrary)]
enum Exp {
    After(i32),
    At(i64),
    Text,
    Missing,
}

#[derive(Debug, Arbitrary)]
enum Signer {
    Key,
    OtherKey(Vec<u8>),
    Unsigned,
    Garbage(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
enum Tamper {
    None,
    /// `exp` moved after signing.
    Exp(i32),
    /// `sub` changed after signing.
    Sub(i64),
    /// The header rewritten after signing (alg none, say).
    Header(Alg),
    FlipSignatureBit(u16),
    CutSignature(u8),
    ExtraSegment,
    /// Padding or whitespace around a segment.
    Padded(u8),
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl Alg {
    fn name(&self) -> String {
        match self {
            Alg::Hs256 => "HS256".into(),
            Alg::Hs384 => "HS384".into(),
            Alg::Hs512 => "HS512".into(),
            Alg::None => "none".into(),
            Alg::NoneCapitalised => "None".into(),
            Alg::Rs256 => "RS256".into(),
            Alg::Es256 => "ES256".into(),
            Alg::Other(s) => s.clone(),
        }
    }
}

impl Generated {
    fn header(&self, alg: &Alg) -> String {
        let mut header = json!({"alg": alg.name()});
        if self.typ {
            header["typ"] = json!("JWT");
        }
        if let Some((k, v)) = &self.extra_header
            && k != "alg"
        {
            header[k.as_str()] = json!(v);
        }
        b64(header.to_string().as_bytes())
    }

    fn exp(&self) -> Option<i64> {
        match self.exp {
            Exp::After(secs) => Some(self.now.saturating_add(secs.into())),
            Exp::At(at) => Some(at),
            Exp::Text | Exp::Missing => None,
        }
    }

    fn claims(&self, sub: &Sub, exp: Option<i64>) -> Value {
        let mut claims = json!({"iat": self.iat});
        match sub {
            Sub::Id(id) => claims["sub"] = json!(id.to_string()),
            Sub::Text(s) => claims["sub"] = json!(s),
            Sub::Number(n) => claims["sub"] = json!(n),
            Sub::Missing => {}
        }
        if let Some(name) = &self.name {
            claims["name"] = json!(name);
        }
        match (&self.exp, exp) {
            (_, Some(exp)) => claims["exp"] = json!(exp),
            (Exp::Text, None) => claims["exp"] = json!("tomorrow"),
            _ => {}
        }
        if let Some(jti) = &self.jti {
            claims["jti"] = json!(jti);
        }
        if let Some(ver) = self.ver {
            claims["ver"] = json!(ver);
        }
        if let Some((k, v)) = &self.extra_claim
            && claims.get(k.as_str()).is_none()
        {
            claims[k.as_str()] = json!(v);
        }
        claims
    }

    /// The token, and the claims chatd must accept from it when it is well formed,
    /// signed by chatd's key and untouched since.
    fn build(&self) -> (String, Option<Claims>) {
        let header = self.header(&self.alg);
        let claims = self.claims(&self.sub, self.exp());
        let payload = b64(claims.to_string().as_bytes());
        let input = format!("{header}.{payload}");
        let signature = match &self.signer {
            Signer::Key => {
                b64(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, KEY), input.as_bytes()).as_ref())
            }
            Signer::OtherKey(key) => {
                b64(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), input.as_bytes()).as_ref())
            }
            Signer::Unsigned => String::new(),
            Signer::Garbage(bytes) => b64(bytes),
        };
        let token = match &self.tamper {
            Tamper::None => format!("{input}.{signature}"),
            Tamper::Exp(delta) => {
                let exp = self.exp().map(|e| e.wrapping_add((*delta).into()));
                let changed = b64(self.claims(&self.sub, exp).to_string().as_bytes());
                format!("{header}.{changed}.{signature}")
            }
            Tamper::Sub(id) => {
                let changed = b64(self
                    .claims(&Sub::Id(*id), self.exp())
                    .to_string()
                    .as_bytes());
                format!("{header}.{changed}.{signature}")
            }
            Tamper::Header(alg) => format!("{}.{payload}.{signature}", self.header(alg)),
            Tamper::FlipSignatureBit(bit) => {
                let mut bytes = URL_SAFE_NO_PAD.decode(&signature).unwrap_or_default();
                if !bytes.is_empty() {
                    let bit = usize::from(*bit) % (bytes.len() * 8);
                    bytes[bit / 8] ^= 1 << (bit % 8);
                }
                format!("{input}.{}", b64(&bytes))
            }
            Tamper::CutSignature(n) => {
                let keep = signature.len().saturating_sub(usize::from(*n % 8) + 1);
                format!("{input}.{}", &signature[..keep])
            }
            Tamper::ExtraSegment => format!("{input}.{signature}.{signature}"),
            Tamper::Padded(how) => match how % 4 {
                0 => format!("{input}.{signature}="),
                1 => format!(" {input}.{signature}"),
                2 => format!("{input}.{signature}\n"),
                _ => format!("{header}=.{payload}.{signature}"),
            },
        };
        let well_formed = matches!(self.signer, Signer::Key)
            && matches!(self.alg, Alg::Hs256)
            && matches!(self.tamper, Tamper::None);
        let expected = match (&self.sub, &self.name, self.exp(), &self.jti, self.ver) {
            (Sub::Id(id), Some(name), Some(exp), Some(jti), Some(ver)) if well_formed => {
                Some(Claims {
                    sub: id.to_string(),
                    name: name.clone(),
                    iat: self.iat,
                    exp,
                    jti: jti.clone(),
                    ver,
                })
            }
            _ => None,
        };
        (token, expected)
    }
}
