//! Accounts: register, login, refresh, and reading or changing one's own profile.
//!
//! Password hashing is the one expensive thing chatd does on its only thread, so every
//! path that hashes first passes the per-IP login limit and the server-wide hash budget.
//! Failures that could reveal whether an account exists (unknown user, wrong password)
//! look and cost the same.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::Client;
use crate::app::{App, Effect, TokenCheck};
use crate::auth::{Claims, Tokens};
use crate::config::Registration;
use crate::http::response::rfc3339;
use crate::http::{ApiError, ErrorCode, Request, Response};
use crate::limits::retry_after_secs;
use crate::store::{Store, StoreError, User};

/// Username rules: 3-32 of `[A-Za-z0-9_.-]`.
pub fn valid_username(name: &str) -> bool {
    (3..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Password rules: 8-1024 bytes.
pub fn valid_password(password: &str) -> bool {
    (8..=1024).contains(&password.len())
}

/// Display names: 1-64 characters (Unicode scalar values), no control characters and
/// no invisible or bidirectional formatting characters.
pub fn valid_display_name(name: &str) -> bool {
    (1..=64).contains(&name.chars().count())
        && !name
            .chars()
            .any(|c| c.is_control() || is_invisible_or_bidi_format(c))
}

/// Characters that show nothing or reorder what is shown around them: with them one
/// name can pass for another ("admin" with a zero-width space) or display text that is
/// not what it is (a right-to-left override).
fn is_invisible_or_bidi_format(c: char) -> bool {
    matches!(
        c,
        // zero-width space, non-joiner, joiner; left-to-right and right-to-left marks
        '\u{200B}'..='\u{200F}'
            // bidirectional embeddings and overrides (LRE, RLE, PDF, LRO, RLO)
            | '\u{202A}'..='\u{202E}'
            // word joiner and invisible operators
            | '\u{2060}'..='\u{2064}'
            // bidirectional isolates (LRI, RLI, FSI, PDI)
            | '\u{2066}'..='\u{2069}'
            // zero-width no-break space (byte order mark)
            | '\u{FEFF}'
            // Arabic letter mark
            | '\u{061C}'
            // Mongolian vowel separator
            | '\u{180E}'
    )
}

/// The public view of an account.
pub fn user_json(user: &User) -> serde_json::Value {
    json!({
        "id": user.id,
        "username": user.username,
        "display_name": user.display_name,
        "created_at": rfc3339(user.created_at),
    })
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

#[derive(Deserialize)]
struct ProfileChange {
    display_name: Option<String>,
    current_password: Option<String>,
    new_password: Option<String>,
}

/// The JSON body as `T`: 415 unless declared JSON, 400 for bad JSON or fields.
fn json_body<T: DeserializeOwned>(req: &Request<'_, '_>) -> Result<T, ApiError> {
    if !req.is_json() {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "the body must be application/json",
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(req.body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    // serde would also accept an array for a struct; the API takes objects only.
    if !value.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| ApiError::bad_request(format!("invalid field: {e}")))
}

fn store_error(e: StoreError) -> ApiError {
    log::error!("database error: {e}");
    ApiError::internal()
}

fn check_login_rate(app: &mut App, client: Client) -> Result<(), ApiError> {
    app.limits.check_login(client.ip).map_err(|wait| {
        app.metrics.rate_limited_login += 1;
        ApiError::rate_limited(retry_after_secs(wait))
    })
}

fn check_hash_budget(app: &mut App, hashes: u32) -> Result<(), ApiError> {
    app.limits.check_password_hashes(hashes).map_err(|wait| {
        app.metrics.rate_limited_password_hashes += 1;
        ApiError::rate_limited(retry_after_secs(wait))
    })
}

pub fn register(
    app: &mut App,
    req: &Request<'_, '_>,
    client: Client,
) -> Result<Response, ApiError> {
    if app.config.registration == Registration::Closed {
        return Err(ApiError::new(
            ErrorCode::RegistrationClosed,
            "registration is closed on this server",
        ));
    }
    check_login_rate(app, client)?;
    let creds: Credentials = json_body(req)?;
    if !valid_username(&creds.username) {
        return Err(ApiError::new(
            ErrorCode::InvalidUsername,
            "usernames are 3-32 characters of A-Z, a-z, 0-9, '_', '.', '-'",
        ));
    }
    if !valid_password(&creds.password) {
        return Err(ApiError::new(
            ErrorCode::WeakPassword,
            "passwords are 8-1024 bytes long",
        ));
    }
    if app
        .store
        .user_by_name(&creds.username)
        .map_err(store_error)?
        .is_some()
    {
        return Err(username_taken());
    }
    check_hash_budget(app, 1)?;
    let hash = app.passwords.hash(&creds.password).map_err(|e| {
        log::error!("{e}");
        ApiError::internal()
    })?;
    let user = match app
        .store
        .create_user(&creds.username, &hash, client.now.unix_secs())
    {
        Ok(user) => user,
        Err(StoreError::UsernameTaken) => return Err(username_taken()),
        Err(e) => return Err(store_error(e)),
    };
    app.metrics.registrations += 1;
    log::info!("registered user {} (id {})", user.username, user.id);
    Ok(Response::json(201, &user_json(&user)))
}

fn username_taken() -> ApiError {
    ApiError::new(ErrorCode::UsernameTaken, "that username is taken")
}

fn invalid_credentials() -> ApiError {
    ApiError::new(ErrorCode::InvalidCredentials, "wrong username or password")
}

pub fn login(app: &mut App, req: &Request<'_, '_>, client: Client) -> Result<Response, ApiError> {
    check_login_rate(app, client)?;
    let creds: Credentials = json_body(req)?;
    check_hash_budget(app, 1)?;
    let user = if valid_username(&creds.username) && creds.password.len() <= 1024 {
        app.store
            .user_by_name(&creds.username)
            .map_err(store_error)?
    } else {
        None
    };
    let verified = match &user {
        Some(user) => app.passwords.verify(&creds.password, &user.password_hash),
        None => app.passwords.verify_unknown_user(&creds.password),
    };
    match user {
        Some(user) if verified => {
            app.metrics.logins_ok += 1;
            token_response(app, &user, client)
        }
        _ => {
            app.metrics.logins_failed += 1;
            Err(invalid_credentials())
        }
    }
}

pub fn refresh(app: &mut App, req: &Request<'_, '_>, client: Client) -> Result<Response, ApiError> {
    let user = authenticate(app, req, client)?;
    token_response(app, &user, client)
}

fn token_response(app: &App, user: &User, client: Client) -> Result<Response, ApiError> {
    let (token, _) = app
        .tokens
        .issue(
            user.id,
            &user.username,
            user.password_version,
            client.now.unix_secs(),
        )
        .map_err(|_| ApiError::internal())?;
    Ok(Response::json(
        200,
        &json!({
            "token": token,
            "token_type": "Bearer",
            "expires_in": app.tokens.ttl_secs(),
            "user": user_json(user),
        }),
    ))
}

/// The user named by a valid bearer token whose password version is current.
pub fn authenticate(app: &App, req: &Request<'_, '_>, client: Client) -> Result<User, ApiError> {
    let token = req.bearer_token().ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unauthorized,
            "an Authorization: Bearer <token> header is required",
        )
    })?;
    authenticate_token(app, token, client).map(|(user, _)| user)
}

/// [`user_for_token`] with its failures as HTTP errors.
pub fn authenticate_token(
    app: &App,
    token: &str,
    client: Client,
) -> Result<(User, Claims), ApiError> {
    user_for_token(&app.tokens, &app.store, token, client.now.unix_secs()).map_err(|e| match e {
        TokenCheck::Expired => ApiError::new(ErrorCode::TokenExpired, "the token has expired"),
        TokenCheck::Invalid => ApiError::new(ErrorCode::Unauthorized, "invalid token"),
        TokenCheck::Revoked => {
            ApiError::new(ErrorCode::Unauthorized, "the token is no longer valid")
        }
        TokenCheck::Storage => ApiError::internal(),
    })
}

/// Checks a token: signature, expiry, account still present, password unchanged.
pub fn user_for_token(
    tokens: &Tokens,
    store: &Store,
    token: &str,
    now_secs: i64,
) -> Result<(User, Claims), TokenCheck> {
    let claims = tokens.verify(token, now_secs)?;
    let user = claims
        .user_id()
        .map(|id| store.user_by_id(id))
        .transpose()
        .map_err(|e| {
            log::error!("database error: {e}");
            TokenCheck::Storage
        })?
        .flatten()
        .ok_or(TokenCheck::Revoked)?;
    if user.password_version != claims.ver {
        return Err(TokenCheck::Revoked);
    }
    Ok((user, claims))
}

pub fn get_me(app: &mut App, req: &Request<'_, '_>, client: Client) -> Result<Response, ApiError> {
    let user = authenticate(app, req, client)?;
    Ok(Response::json(200, &user_json(&user)))
}

pub fn put_me(app: &mut App, req: &Request<'_, '_>, client: Client) -> Result<Response, ApiError> {
    let mut user = authenticate(app, req, client)?;
    let change: ProfileChange = json_body(req)?;
    if let Some(name) = &change.display_name
        && !valid_display_name(name)
    {
        return Err(ApiError::bad_request(
            "display_name must be 1-64 characters without control, invisible or \
             bidirectional formatting characters",
        ));
    }
    if let Some(new_password) = &change.new_password {
        let Some(current) = &change.current_password else {
            return Err(ApiError::bad_request(
                "current_password is required to change the password",
            ));
        };
        if !valid_password(new_password) {
            return Err(ApiError::new(
                ErrorCode::WeakPassword,
                "passwords are 8-1024 bytes long",
            ));
        }
        check_login_rate(app, client)?;
        check_hash_budget(app, 2)?;
        if !app.passwords.verify(current, &user.password_hash) {
            return Err(
                ApiError::new(ErrorCode::InvalidCredentials, "current_password is wrong")
                    .with_status(403),
            );
        }
        let hash = app.passwords.hash(new_password).map_err(|e| {
            log::error!("{e}");
            ApiError::internal()
        })?;
        user.password_version = app
            .store
            .set_password(user.id, &hash)
            .map_err(store_error)?;
        app.effects.push(Effect::CredentialsChanged(user.id));
        log::info!("user {} changed their password", user.username);
    }
    if let Some(name) = change.display_name {
        app.store
            .set_display_name(user.id, &name)
            .map_err(store_error)?;
        user.display_name = name;
    }
    Ok(Response::json(200, &user_json(&user)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_rules() {
        for ok in ["abc", "a.b-c_d", "ABC123", &"x".repeat(32)] {
            assert!(valid_username(ok), "{ok}");
        }
        for bad in ["ab", "", "a b", "ab!", "üser", &"x".repeat(33), "a/b"] {
            assert!(!valid_username(bad), "{bad}");
        }
    }

    #[test]
    fn password_and_display_name_rules() {
        assert!(!valid_password("1234567"));
        assert!(valid_password("12345678"));
        assert!(valid_password(&"x".repeat(1024)));
        assert!(!valid_password(&"x".repeat(1025)));
        assert!(valid_display_name("Ünïcödé 名前"));
        assert!(valid_display_name(&"é".repeat(64)));
        assert!(!valid_display_name(&"é".repeat(65)));
        assert!(!valid_display_name(""));
        assert!(!valid_display_name("tab\there"));
        assert!(!valid_display_name("bell\u{7}"));
    }

    #[test]
    fn display_names_refuse_invisible_and_bidirectional_formatting() {
        let refused = [
            '\u{200B}', '\u{200C}', '\u{200D}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}',
            '\u{202C}', '\u{202D}', '\u{202E}', '\u{2060}', '\u{2061}', '\u{2062}', '\u{2063}',
            '\u{2064}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}', '\u{FEFF}', '\u{061C}',
            '\u{180E}',
        ];
        for c in refused {
            assert!(
                !valid_display_name(&format!("admin{c}")),
                "U+{:04X}",
                c as u32
            );
            assert!(
                !valid_display_name(&c.to_string()),
                "U+{:04X} alone",
                c as u32
            );
        }
        // Their neighbours, and scripts written right to left, are fine.
        for ok in [
            "\u{2010}dash",
            "\u{2070}",
            "\u{202F}narrow",
            "\u{1810}",
            "שלום",
            "مرحبا",
        ] {
            assert!(valid_display_name(ok), "{ok:?}");
        }
    }
}
