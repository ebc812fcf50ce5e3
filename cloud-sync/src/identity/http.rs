//! The login routes (`/api/v1/auth/...`), the organisation's account administration
//! (`/api/v1/admin/users`), and the token keys (`/.well-known/jwks.json`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use case_model::UserId;
use serde::Deserialize;

use super::roles::{Permission, Role};
use super::sso::SsoError;
use super::{Identity, IdentityError, LoginOutcome, RESET_LINK_S, SETUP_LINK_S, SecondFactor, Tokens};
use crate::front_door::{Caller, SESSION_COOKIE, cookie_value, now_s, require};
use crate::{ApiError, HubState};

/// The routes of this module.
pub(crate) fn routes() -> crate::Routes {
    crate::Routes::default()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/refresh", post(refresh))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/auth/me", get(me))
        .route("/api/v1/auth/mfa/enrol", post(mfa_enrol))
        .route("/api/v1/auth/mfa/confirm", post(mfa_confirm))
        .route("/api/v1/auth/password/reset", post(password_reset))
        .route("/api/v1/auth/password/forgot", post(password_forgot))
        .route("/api/v1/auth/sso", get(sso_list))
        .route("/api/v1/auth/sso/{org}/start", get(sso_start))
        .route("/api/v1/auth/sso/{org}/callback", get(sso_callback))
        .route("/api/v1/auth/pin", axum::routing::put(set_pin))
        .route("/api/v1/admin/users/{username}/pin", axum::routing::delete(clear_pin))
        .route("/api/v1/admin/break-glass", get(break_glass_logins))
        .route("/api/v1/admin/users", get(list_users).post(add_user))
        .route("/api/v1/admin/users/{username}/disable", post(disable_user))
        .route("/api/v1/admin/users/{username}/reset-link", post(reset_link))
        .route("/api/v1/admin/users/{username}/sso", axum::routing::put(link_sso))
}

impl From<IdentityError> for ApiError {
    fn from(e: IdentityError) -> Self {
        let status = match &e {
            IdentityError::BadCredentials | IdentityError::SecondFactorRequired | IdentityError::SecondFactor(_) => {
                StatusCode::UNAUTHORIZED
            }
            IdentityError::BadToken(_) => StatusCode::UNAUTHORIZED,
            IdentityError::LockedOut(_) => StatusCode::TOO_MANY_REQUESTS,
            IdentityError::Disabled => StatusCode::FORBIDDEN,
            IdentityError::WeakPassword(_) | IdentityError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            IdentityError::NoSuchUser(_) => StatusCode::NOT_FOUND,
            IdentityError::Storage(crate::storage::StorageError::NoSuchOrg(_)) => StatusCode::NOT_FOUND,
            IdentityError::Storage(_) => {
                tracing::error!(error = %e, "identity storage failed");
                return ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the hub could not reach its storage; nothing was changed, try again".into(),
                );
            }
        };
        ApiError(status, e.to_string())
    }
}

fn identity(state: &HubState) -> Result<Arc<Identity>, ApiError> {
    state
        .identity
        .clone()
        .ok_or_else(|| ApiError(StatusCode::SERVICE_UNAVAILABLE, "logins are not running on this hub".into()))
}

/// Runs blocking identity work (argon2, storage) off the async threads.
async fn run<T: Send + 'static>(
    state: &HubState,
    f: impl FnOnce(&Identity) -> Result<T, IdentityError> + Send + 'static,
) -> Result<T, ApiError> {
    let id = identity(state)?;
    tokio::task::spawn_blocking(move || f(&id))
        .await
        .map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "the request failed inside the hub".into()))?
        .map_err(ApiError::from)
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("the body must be JSON like {shape}: {e}")))
}

/// A login's answer: the tokens, and the session cookie for browsers.
fn with_cookie(tokens: Tokens, max_age: i64) -> Response {
    let mut resp = axum::Json(&tokens).into_response();
    set_session_cookies(&mut resp, &tokens, max_age);
    resp
}

/// The browser's session cookie (HttpOnly), and its CSRF token in a cookie the page's own
/// script reads to send back as `X-CSRF-Token` (another site can neither read it nor
/// forge the header).
fn set_session_cookies(resp: &mut Response, tokens: &Tokens, max_age: i64) {
    if !tokens.cookie.is_empty() {
        let cookies = [
            format!("{SESSION_COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}", tokens.cookie),
            format!("{CSRF_COOKIE}={}; Path=/; Secure; SameSite=Strict; Max-Age={max_age}", tokens.csrf_token),
        ];
        for c in cookies {
            if let Ok(v) = HeaderValue::from_str(&c) {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
        }
    }
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// The cookie holding a browser's CSRF token.
pub(crate) const CSRF_COOKIE: &str = "__Host-medvan_csrf";
/// The cookie binding a single sign-on to the browser that started it. SameSite=Lax: it
/// must come along on the provider's top-level redirect back to the hub.
const SSO_COOKIE: &str = "__Host-medvan_sso";

async fn jwks(State(state): State<Arc<HubState>>) -> Result<Response, ApiError> {
    let keys = identity(&state)?.jwks();
    Ok(([(header::CACHE_CONTROL, HeaderValue::from_static("max-age=60"))], axum::Json(keys)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    org: String,
    username: String,
    password: String,
    #[serde(default)]
    totp: Option<String>,
    #[serde(default)]
    recovery_code: Option<String>,
}

/// The login routes take JSON only: a cross-site form (text/plain) cannot log a browser in
/// to someone else's account.
fn json_only(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if ct.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")) {
        Ok(())
    } else {
        Err(ApiError(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send the body as Content-Type: application/json".into()))
    }
}

async fn login(
    State(state): State<Arc<HubState>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    json_only(&headers)?;
    let req: LoginRequest =
        json_body(&body, r#"{"org": "...", "username": "...", "password": "...", "totp": "123456"}"#)?;
    let second = match (req.totp, req.recovery_code) {
        (Some(code), _) => Some(SecondFactor::Totp(code)),
        (None, Some(code)) => Some(SecondFactor::Recovery(code)),
        (None, None) => None,
    };
    let id = identity(&state)?;
    let outcome =
        tokio::task::spawn_blocking(move || id.login(&req.org, &req.username, &req.password, second, now_s()))
            .await
            .map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "the request failed inside the hub".into()))?;
    match outcome {
        Ok(LoginOutcome::Session(tokens)) => {
            let max_age = identity(&state)?.settings().absolute_timeout_s;
            Ok(with_cookie(*tokens, max_age))
        }
        Ok(LoginOutcome::EnrolMfa { enrolment_token }) => Ok((
            [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
            axum::Json(serde_json::json!({
                "mfa_enrolment_required": true,
                "enrolment_token": enrolment_token,
                "next": "POST /api/v1/auth/mfa/enrol, then /api/v1/auth/mfa/confirm with a code from the app",
            })),
        )
            .into_response()),
        Err(IdentityError::LockedOut(s)) => {
            let mut r = ApiError::from(IdentityError::LockedOut(s)).into_response();
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s.max(1) as u64));
            Ok(r)
        }
        Err(IdentityError::SecondFactorRequired) => {
            let mut r = (
                StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({
                    "error": IdentityError::SecondFactorRequired.to_string(),
                    "second_factor_required": true,
                })),
            )
                .into_response();
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"medvan-hub\""));
            Ok(r)
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshRequest {
    refresh_token: String,
}

async fn refresh(State(state): State<Arc<HubState>>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let req: RefreshRequest = json_body(&body, r#"{"refresh_token": "..."}"#)?;
    let tokens = run(&state, move |id| id.refresh(&req.refresh_token, now_s())).await?;
    Ok(with_cookie(tokens, 0))
}

async fn logout(State(state): State<Arc<HubState>>, Caller(p): Caller) -> Result<Response, ApiError> {
    run(&state, move |id| id.logout(&p.session, now_s())).await?;
    let mut r = StatusCode::NO_CONTENT.into_response();
    for clear in [
        format!("{SESSION_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"),
        format!("{CSRF_COOKIE}=; Path=/; Secure; SameSite=Strict; Max-Age=0"),
    ] {
        if let Ok(v) = HeaderValue::from_str(&clear) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    Ok(r)
}

async fn me(Caller(p): Caller) -> Response {
    let perms: Vec<Permission> = [
        Permission::CaseRead,
        Permission::CaseWrite,
        Permission::ImageRead,
        Permission::ImageWrite,
        Permission::AuditRead,
        Permission::UserAdmin,
        Permission::FleetAdmin,
        Permission::ConsultAnswer,
    ]
    .into_iter()
    .filter(|x| p.can(*x))
    .collect();
    axum::Json(serde_json::json!({
        "user": p.user.as_str(),
        "org": p.org.as_str(),
        "roles": p.roles,
        "permissions": perms,
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrolRequest {
    enrolment_token: String,
    #[serde(default)]
    code: Option<String>,
}

async fn mfa_enrol(State(state): State<Arc<HubState>>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let req: EnrolRequest = json_body(&body, r#"{"enrolment_token": "..."}"#)?;
    let setup = run(&state, move |id| id.mfa_enrol(&req.enrolment_token, now_s())).await?;
    Ok(([(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], axum::Json(setup)).into_response())
}

async fn mfa_confirm(State(state): State<Arc<HubState>>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let req: EnrolRequest = json_body(&body, r#"{"enrolment_token": "...", "code": "123456"}"#)?;
    let code = req.code.ok_or_else(|| {
        ApiError(StatusCode::BAD_REQUEST, "send the code the authenticator app shows as \"code\"".into())
    })?;
    let tokens = run(&state, move |id| id.mfa_confirm(&req.enrolment_token, &code, now_s())).await?;
    let max_age = identity(&state)?.settings().absolute_timeout_s;
    Ok(with_cookie(tokens, max_age))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetRequest {
    token: String,
    password: String,
}

async fn password_reset(State(state): State<Arc<HubState>>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let req: ResetRequest = json_body(&body, r#"{"token": "...", "password": "..."}"#)?;
    run(&state, move |id| id.redeem_reset(&req.token, &req.password, now_s())).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForgotRequest {
    org: String,
    username: String,
}

/// A user who forgot their password asks for a reset link by mail. The answer is the same
/// whether or not the account exists, has an address, or was sent a link a moment ago, and
/// comes before any of that is looked at: neither its words nor its timing tell who has an
/// account.
async fn password_forgot(
    State(state): State<Arc<HubState>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    json_only(&headers)?;
    let req: ForgotRequest = json_body(&body, r#"{"org": "org-north", "username": "dr.osei"}"#)?;
    let Some(mailer) = state.mailer.clone() else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "this hub sends no mail; ask your administrator for a reset link".into(),
        ));
    };
    let id = identity(&state)?;
    let public_url = state.public_url.clone();
    tokio::spawn(async move {
        let found = tokio::task::spawn_blocking(move || id.reset_by_mail(&req.org, &req.username, now_s())).await;
        let reset = match found {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => return tracing::error!(error = %e, "could not make a reset link"),
            Err(_) => return tracing::error!("making a reset link failed inside the hub"),
        };
        let minutes = RESET_LINK_S / 60;
        let open = match &public_url {
            Some(url) => format!(
                "Open this link within {minutes} minutes to choose a new password:\n\n{url}/reset-password#token={}\n",
                reset.token
            ),
            None => {
                format!("Enter this code on the password reset page within {minutes} minutes:\n\n{}\n", reset.token)
            }
        };
        let text = format!(
            "Hello {user},\n\nSomeone, we hope you, asked to reset the password of your Medvan account \"{user}\" \
             ({org}).\n\n{open}\nThe link works once. If you did not ask for it, ignore this mail: your password \
             stays as it is.\n\n-- \nMedvan\n",
            user = reset.username,
            org = reset.org,
        );
        match mailer.send(&reset.to, "Reset your Medvan password", &text).await {
            Ok(()) => tracing::info!(user = %reset.username, org = %reset.org, "mailed a password reset link"),
            Err(e) => {
                tracing::warn!(user = %reset.username, org = %reset.org, error = %e, "could not mail a password reset link")
            }
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({
            "message": "If the account exists and has a mail address, a reset link is on its way; it works once, for 30 minutes.",
        })),
    )
        .into_response())
}

async fn list_users(State(state): State<Arc<HubState>>, Caller(p): Caller) -> Result<Response, ApiError> {
    require(&p, Permission::UserAdmin)?;
    let org = p.org.clone();
    let list = run(&state, move |id| id.users(&org)).await?;
    Ok(axum::Json(list).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddUserRequest {
    username: String,
    roles: Vec<Role>,
    #[serde(default)]
    email: Option<String>,
    /// The account logs in through the organisation's identity provider.
    #[serde(default)]
    sso: bool,
}

async fn add_user(
    State(state): State<Arc<HubState>>,
    Caller(p): Caller,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require(&p, Permission::UserAdmin)?;
    let req: AddUserRequest = json_body(&body, r#"{"username": "dr.ana", "roles": ["doctor"]}"#)?;
    let username =
        UserId::parse(&req.username).map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let name = username.to_string();
    let sso = req.sso;
    let token = run(&state, move |id| {
        if req.sso {
            id.add_sso_user(p.user.as_str(), &p.org, &username, &req.roles, req.email, now_s()).map(|()| None)
        } else {
            id.add_user(p.user.as_str(), &p.org, &username, &req.roles, req.email, now_s()).map(Some)
        }
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        axum::Json(serde_json::json!({
            "username": name,
            "sso": sso,
            "setup_token": token,
            "valid_s": token.as_ref().map(|_| SETUP_LINK_S),
        })),
    )
        .into_response())
}

fn username(s: &str) -> Result<UserId, ApiError> {
    // A name that cannot exist is answered like one that does not.
    UserId::parse(s).map_err(|_| ApiError(StatusCode::NOT_FOUND, format!("there is no user {s:?}")))
}

async fn disable_user(
    State(state): State<Arc<HubState>>,
    Caller(p): Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    require(&p, Permission::UserAdmin)?;
    let user = username(&name)?;
    run(&state, move |id| id.disable_user(p.user.as_str(), &p.org, &user, now_s())).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn reset_link(
    State(state): State<Arc<HubState>>,
    Caller(p): Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    require(&p, Permission::UserAdmin)?;
    let user = username(&name)?;
    let token = run(&state, move |id| id.reset_link(p.user.as_str(), &p.org, &user, now_s(), RESET_LINK_S)).await?;
    Ok((
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        axum::Json(serde_json::json!({ "reset_token": token, "valid_s": RESET_LINK_S })),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinRequest {
    pin: String,
}

/// Sets the caller's own PIN for the vans' touchscreens.
async fn set_pin(
    State(state): State<Arc<HubState>>,
    Caller(p): Caller,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: PinRequest = json_body(&body, r#"{"pin": "604182"}"#)?;
    run(&state, move |id| id.set_pin(&p.org, &p.user, &req.pin, now_s())).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkRequest {
    subject: Option<String>,
}

/// Links an account to a person at the organisation's identity provider, or unlinks it.
async fn link_sso(
    State(state): State<Arc<HubState>>,
    Caller(p): Caller,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require(&p, Permission::UserAdmin)?;
    let user = username(&name)?;
    let req: LinkRequest = json_body(&body, r#"{"subject": "https://login.hospital.example|248289761001"}"#)?;
    run(&state, move |id| id.set_sso_subject(p.user.as_str(), &p.org, &user, req.subject, now_s())).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn clear_pin(
    State(state): State<Arc<HubState>>,
    Caller(p): Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    require(&p, Permission::UserAdmin)?;
    let user = username(&name)?;
    run(&state, move |id| id.clear_pin(p.user.as_str(), &p.org, &user, now_s())).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Break-glass logins on the organisation's vans, newest first, for review: from the vans'
/// audit logs as the hub holds them. Reading them is audited.
async fn break_glass_logins(State(state): State<Arc<HubState>>, Caller(p): Caller) -> Result<Response, ApiError> {
    require(&p, Permission::AuditRead)?;
    let id = identity(&state)?;
    let (org, user) = (p.org.to_string(), p.user.to_string());
    let storage = id.storage();
    let found = tokio::task::spawn_blocking(move || {
        storage.audit(&audit::Record {
            at: now_s() * 1000,
            actor: user,
            action: "audit.break_glass_review".into(),
            case_id: None,
            outcome: audit::Outcome::Allowed,
            detail: format!("org={org}"),
        })?;
        storage.van_audit_by_action(&org, "auth.break_glass", 1000)
    })
    .await
    .map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "the request failed inside the hub".into()))?
    .map_err(|e| {
        tracing::error!(error = %e, "could not read the vans' audit logs");
        ApiError(StatusCode::SERVICE_UNAVAILABLE, "the hub could not reach its storage; try again".into())
    })?;
    let list: Vec<serde_json::Value> = found
        .into_iter()
        .map(|(van, e)| {
            serde_json::json!({
                "van": van,
                "at": audit::export::ecs(&e, "edge-agent")["@timestamp"],
                "user": e.actor,
                "detail": e.detail,
                "seq": e.seq,
            })
        })
        .collect();
    Ok(axum::Json(list).into_response())
}

// ---- single sign-on ---------------------------------------------------------------------

impl From<SsoError> for ApiError {
    fn from(e: SsoError) -> Self {
        let e = match e {
            SsoError::Identity(i) => return ApiError::from(i),
            other => other,
        };
        let status = match &e {
            SsoError::NotConfigured(_) => StatusCode::NOT_FOUND,
            // Host names and TLS details are for the operator's log, not the user's page.
            SsoError::Unreachable(detail) => {
                tracing::warn!(error = %detail, "an identity provider could not be reached");
                return ApiError(
                    StatusCode::BAD_GATEWAY,
                    "the hospital's login service could not be reached; try again in a minute".into(),
                );
            }
            // The provider's words came with the callback (or from its token endpoint): they
            // go to the log; the page names only the error code, in its own alphabet.
            SsoError::Protocol(oidc::OidcError::Refused { error, description }) => {
                tracing::warn!(%error, description = description.as_deref().unwrap_or(""), "an identity provider refused a login");
                let code: String = error.chars().filter(|c| c.is_ascii_lowercase() || *c == '_').take(40).collect();
                return ApiError(
                    StatusCode::UNAUTHORIZED,
                    format!(
                        "the hospital's login service refused the login ({code}); try again or ask your administrator"
                    ),
                );
            }
            SsoError::Protocol(oidc::OidcError::Callback(_) | oidc::OidcError::StateMismatch) => {
                StatusCode::BAD_REQUEST
            }
            SsoError::Protocol(_) => {
                tracing::warn!(error = %e, "an identity provider's answer was refused");
                StatusCode::BAD_GATEWAY
            }
            SsoError::Stale => StatusCode::BAD_REQUEST,
            SsoError::NoAccount { .. } | SsoError::SubjectMismatch(_) | SsoError::NotLinked { .. } => {
                StatusCode::FORBIDDEN
            }
            SsoError::Identity(_) => unreachable!("answered above"),
            SsoError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

/// The organisations whose users can log in through their identity provider.
async fn sso_list(State(state): State<Arc<HubState>>) -> Response {
    axum::Json(state.sso.entries()).into_response()
}

#[derive(Debug, Deserialize)]
struct StartQuery {
    #[serde(default)]
    return_to: Option<String>,
}

/// Where a browser may be sent after a login: a path of this hub, never another site.
fn local_path(p: Option<&str>) -> Result<String, ApiError> {
    match p {
        None => Ok("/".into()),
        Some(p)
            if p.starts_with('/') && !p.starts_with("//") && !p.contains('\\') && !p.chars().any(char::is_control) =>
        {
            Ok(p.to_owned())
        }
        Some(_) => Err(ApiError(StatusCode::BAD_REQUEST, "return_to must be a path on this hub, like /cases".into())),
    }
}

/// Sends the browser to the organisation's identity provider.
async fn sso_start(
    State(state): State<Arc<HubState>>,
    Path(org): Path<String>,
    axum::extract::Query(q): axum::extract::Query<StartQuery>,
) -> Result<Response, ApiError> {
    let return_to = local_path(q.return_to.as_deref())?;
    let id = identity(&state)?;
    let (url, browser_state) = state.sso.start(&id, &org, &return_to, now_s()).await?;
    let mut r = axum::response::Redirect::to(&url).into_response();
    let cookie = format!(
        "{SSO_COOKIE}={browser_state}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={}",
        super::sso::PENDING_S
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// Where the identity provider sends the browser back: the hub session starts here, and a
/// small page moves the browser on (a page of this site, so the SameSite=Strict session
/// cookie goes with the next request).
async fn sso_callback(
    State(state): State<Arc<HubState>>,
    Path(org): Path<String>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let browser_state = cookie_value(&headers, SSO_COOKIE).map(str::to_owned);
    let query = uri.query().unwrap_or("").to_owned();
    // Only the browser whose login this is loses its binding cookie: a crafted link cannot
    // cancel someone's login in progress.
    let own = browser_state.is_some() && browser_state == oidc::Callback::state_of(&query);
    let outcome = match identity(&state) {
        Ok(id) => state.sso.finish(&id, &org, &query, browser_state.as_deref(), now_s()).await.map_err(ApiError::from),
        Err(e) => Err(e),
    };
    let clear = format!("{SSO_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0");
    let mut resp = match outcome {
        Ok((tokens, return_to)) => {
            let max_age = state.identity.as_ref().map_or(0, |i| i.settings().absolute_timeout_s);
            let target = html_escape(&return_to);
            let page = format!(
                "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Logged in</title>\
                 <meta http-equiv=\"refresh\" content=\"0;url={target}\"></head>\
                 <body><p>You are logged in as {} ({}). <a href=\"{target}\">Continue</a></p></body></html>",
                html_escape(&tokens.user),
                html_escape(&tokens.org),
            );
            let mut r = axum::response::Html(page).into_response();
            set_session_cookies(&mut r, &tokens, max_age);
            r
        }
        Err(ApiError(status, message)) => {
            let page = format!(
                "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Login failed</title></head>\
                 <body><h1>Login failed</h1><p role=\"alert\">{}</p><p><a href=\"/\">Back to the start</a></p></body></html>",
                html_escape(&message)
            );
            (status, axum::response::Html(page)).into_response()
        }
    };
    if own && let Ok(v) = HeaderValue::from_str(&clear) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The URL carried a code: it goes to no other site, and the page goes in no frame.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

fn html_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '<' => "&lt;".into(),
            '>' => "&gt;".into(),
            '&' => "&amp;".into(),
            '"' => "&quot;".into(),
            '\'' => "&#39;".into(),
            c => c.to_string(),
        })
        .collect()
}
