//! Accounts: register, login, refresh, and reading or changing one's own profile.
//!
//! Password hashing is the one expensive thing chatd does on its only thread, so every
//! path that hashes first passes the per-IP login limit and the server-wide hash budget.
//! Failures that could reveal whether an account exists (unknown user, wrong password)
//! look and cost the same.
//!
//! Every handler that needs an account submits a storage request and returns
//! [`Reply::Wait`] with what it needs to go on ([`Waiting`]); [`resume`] takes the
//! answer, so the loop serves everyone else meanwhile.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::Client;
use crate::app::{App, Effect, TokenCheck};
use crate::auth::Claims;
use crate::config::Registration;
use crate::http::response::rfc3339;
use crate::http::{ApiError, ErrorCode, Request, Response};
use crate::limits::retry_after_secs;
use crate::store::{Answer, Failure, Op, Outcome, Ticket, User};

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

#[derive(Debug, Deserialize)]
pub struct ProfileChange {
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

/// The answer to a request that storage failed.
fn storage_failure(failure: Failure) -> ApiError {
    match failure {
        Failure::Unavailable => ApiError::new(
            ErrorCode::Unavailable,
            "the database did not answer in time; try again",
        ),
        Failure::Failed => ApiError::internal(),
    }
}

/// An answer of the wrong kind for the request: a bug, never the client's doing.
fn unexpected(answer: &Answer) -> ApiError {
    log::error!("unexpected storage answer {answer:?}");
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

/// A request waiting for storage, and what it needs to go on.
#[derive(Debug)]
pub enum Waiting {
    /// Register: is the name free? Then hash and create.
    RegisterLookup { username: String, password: String },
    /// Register: the account created, or the name taken meanwhile.
    RegisterCreate,
    /// Login: the account of the name, to verify the password against.
    Login { password: String },
    /// A bearer token's account, to check its password version; then `then`.
    Token { claims: Claims, then: AfterToken },
    /// PUT /me: the changes stored; the account as it is now.
    Profile { user: User, password_changed: bool },
}

/// What a request authenticated by a bearer token does once the account is checked.
#[derive(Debug)]
pub enum AfterToken {
    Me,
    Refresh,
    ChangeProfile(ProfileChange),
    /// `GET /ws`: the 101 answer, sent once the account checks out.
    Upgrade(Response),
}

/// What a handler does next: answer, or wait for storage.
#[derive(Debug)]
pub enum Reply {
    Now(Response),
    /// An accepted WebSocket upgrade: the 101 and the session it starts.
    Upgraded(Response, super::WsSession),
    /// Answered by [`resume`] once storage answers this ticket; an accepted upgrade
    /// comes back with its session.
    Wait(Ticket, Waiting),
}

pub fn register(app: &mut App, req: &Request<'_, '_>, client: Client) -> Result<Reply, ApiError> {
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
    // A taken name is refused before the expensive hash; the unique index decides in
    // the end (two registrations of one name at once).
    let ticket = app.submit(Op::UserByName(creds.username.clone()));
    Ok(Reply::Wait(
        ticket,
        Waiting::RegisterLookup {
            username: creds.username,
            password: creds.password,
        },
    ))
}

fn username_taken() -> ApiError {
    ApiError::new(ErrorCode::UsernameTaken, "that username is taken")
}

fn invalid_credentials() -> ApiError {
    ApiError::new(ErrorCode::InvalidCredentials, "wrong username or password")
}

pub fn login(app: &mut App, req: &Request<'_, '_>, client: Client) -> Result<Reply, ApiError> {
    check_login_rate(app, client)?;
    let creds: Credentials = json_body(req)?;
    check_hash_budget(app, 1)?;
    if !valid_username(&creds.username) || creds.password.len() > 1024 {
        // No account can match: the same work and answer as an unknown user.
        app.passwords.verify_unknown_user(&creds.password);
        app.metrics.logins_failed += 1;
        return Err(invalid_credentials());
    }
    let ticket = app.submit(Op::UserByName(creds.username));
    Ok(Reply::Wait(
        ticket,
        Waiting::Login {
            password: creds.password,
        },
    ))
}

pub fn refresh(app: &mut App, req: &Request<'_, '_>, client: Client) -> Result<Reply, ApiError> {
    authenticate(app, req, client, AfterToken::Refresh)
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

/// Checks the bearer token's signature and expiry, then asks storage for its account
/// (whose password version decides) before doing `then`.
pub fn authenticate(
    app: &mut App,
    req: &Request<'_, '_>,
    client: Client,
    then: AfterToken,
) -> Result<Reply, ApiError> {
    let token = req.bearer_token().ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unauthorized,
            "an Authorization: Bearer <token> header is required",
        )
    })?;
    authenticate_token(app, token, client, then)
}

/// [`authenticate`] for a token found elsewhere (the WebSocket subprotocol).
pub fn authenticate_token(
    app: &mut App,
    token: &str,
    client: Client,
    then: AfterToken,
) -> Result<Reply, ApiError> {
    let claims = app
        .tokens
        .verify(token, client.now.unix_secs())
        .map_err(|e| token_error(e.into()))?;
    let id = claims
        .user_id()
        .ok_or_else(|| token_error(TokenCheck::Invalid))?;
    let ticket = app.submit(Op::UserById(id));
    Ok(Reply::Wait(ticket, Waiting::Token { claims, then }))
}

fn token_error(check: TokenCheck) -> ApiError {
    match check {
        TokenCheck::Expired => ApiError::new(ErrorCode::TokenExpired, "the token has expired"),
        TokenCheck::Invalid => ApiError::new(ErrorCode::Unauthorized, "invalid token"),
        TokenCheck::Revoked => {
            ApiError::new(ErrorCode::Unauthorized, "the token is no longer valid")
        }
    }
}

/// The account a token's claims name, if it still exists with the password version
/// the token was issued for.
pub fn token_account(claims: &Claims, account: Option<User>) -> Result<User, TokenCheck> {
    let user = account.ok_or(TokenCheck::Revoked)?;
    if user.password_version != claims.ver {
        return Err(TokenCheck::Revoked);
    }
    Ok(user)
}

pub fn get_me(app: &mut App, req: &Request<'_, '_>, client: Client) -> Result<Reply, ApiError> {
    authenticate(app, req, client, AfterToken::Me)
}

pub fn put_me(app: &mut App, req: &Request<'_, '_>, client: Client) -> Result<Reply, ApiError> {
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
        if change.current_password.is_none() {
            return Err(ApiError::bad_request(
                "current_password is required to change the password",
            ));
        }
        if !valid_password(new_password) {
            return Err(ApiError::new(
                ErrorCode::WeakPassword,
                "passwords are 8-1024 bytes long",
            ));
        }
    }
    authenticate(app, req, client, AfterToken::ChangeProfile(change))
}

/// Goes on with a request once storage answered what it waited for.
pub fn resume(
    app: &mut App,
    waiting: Waiting,
    outcome: Outcome,
    client: Client,
) -> Result<Reply, ApiError> {
    let answer = outcome.map_err(storage_failure)?;
    match waiting {
        Waiting::RegisterLookup { username, password } => {
            match answer {
                Answer::User(None) => {}
                Answer::User(Some(_)) => return Err(username_taken()),
                other => return Err(unexpected(&other)),
            }
            check_hash_budget(app, 1)?;
            let password_hash = app.passwords.hash(&password).map_err(|e| {
                log::error!("{e}");
                ApiError::internal()
            })?;
            let ticket = app.submit(Op::CreateUser {
                username,
                password_hash,
                created_at: client.now.unix_secs(),
            });
            Ok(Reply::Wait(ticket, Waiting::RegisterCreate))
        }
        Waiting::RegisterCreate => match answer {
            Answer::Created(Some(user)) => {
                app.metrics.registrations += 1;
                log::info!("registered user {} (id {})", user.username, user.id);
                Ok(Reply::Now(Response::json(201, &user_json(&user))))
            }
            Answer::Created(None) => Err(username_taken()),
            other => Err(unexpected(&other)),
        },
        Waiting::Login { password } => {
            let user = match answer {
                Answer::User(user) => user,
                other => return Err(unexpected(&other)),
            };
            let verified = match &user {
                Some(user) => app.passwords.verify(&password, &user.password_hash),
                None => app.passwords.verify_unknown_user(&password),
            };
            match user {
                Some(user) if verified => {
                    app.metrics.logins_ok += 1;
                    token_response(app, &user, client).map(Reply::Now)
                }
                _ => {
                    app.metrics.logins_failed += 1;
                    Err(invalid_credentials())
                }
            }
        }
        Waiting::Token { claims, then } => {
            let account = match answer {
                Answer::User(account) => account,
                other => return Err(unexpected(&other)),
            };
            let user = token_account(&claims, account).map_err(token_error)?;
            after_token(app, user, claims.exp, then, client)
        }
        Waiting::Profile {
            mut user,
            password_changed,
        } => {
            if password_changed {
                match answer {
                    Answer::PasswordVersion(Some(version)) => user.password_version = version,
                    // The account was deleted meanwhile.
                    Answer::PasswordVersion(None) => return Err(token_error(TokenCheck::Revoked)),
                    other => return Err(unexpected(&other)),
                }
                app.effects.push(Effect::CredentialsChanged(user.id));
                log::info!("user {} changed their password", user.username);
            }
            Ok(Reply::Now(Response::json(200, &user_json(&user))))
        }
    }
}

/// What an authenticated request does with its account.
fn after_token(
    app: &mut App,
    mut user: User,
    token_expires_at: i64,
    then: AfterToken,
    client: Client,
) -> Result<Reply, ApiError> {
    match then {
        AfterToken::Me => Ok(Reply::Now(Response::json(200, &user_json(&user)))),
        AfterToken::Refresh => token_response(app, &user, client).map(Reply::Now),
        AfterToken::Upgrade(response) => {
            super::accept_upgrade(app, user, token_expires_at, response)
        }
        AfterToken::ChangeProfile(change) => {
            let mut last = None;
            if let Some(name) = change.display_name {
                last = Some(app.submit(Op::SetDisplayName {
                    user: user.id,
                    display_name: name.clone(),
                }));
                user.display_name = name;
            }
            let mut password_changed = false;
            if let (Some(new_password), Some(current)) =
                (&change.new_password, &change.current_password)
            {
                check_login_rate(app, client)?;
                check_hash_budget(app, 2)?;
                if !app.passwords.verify(current, &user.password_hash) {
                    return Err(ApiError::new(
                        ErrorCode::InvalidCredentials,
                        "current_password is wrong",
                    )
                    .with_status(403));
                }
                let password_hash = app.passwords.hash(new_password).map_err(|e| {
                    log::error!("{e}");
                    ApiError::internal()
                })?;
                // Submitted last: both changes are in one transaction, and this answer
                // (the new password version) is the one waited for.
                last = Some(app.submit(Op::SetPassword {
                    user: user.id,
                    password_hash,
                }));
                password_changed = true;
            }
            match last {
                Some(ticket) => Ok(Reply::Wait(
                    ticket,
                    Waiting::Profile {
                        user,
                        password_changed,
                    },
                )),
                None => Ok(Reply::Now(Response::json(200, &user_json(&user)))),
            }
        }
    }
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
