//! The companion cookie: [`SessyncLayer`] carries the sessync token between the user's
//! browser and [`SessyncStore`](crate::SessyncStore) for the length of one request.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderValue, Request, Response};
use sessync_client::Attributes;
use tower_layer::Layer;
use tower_service::Service;
use tower_sessions_core::session::Id;

/// The companion cookie's default name.
pub const DEFAULT_COOKIE_NAME: &str = "sessync";

tokio::task_local! {
    /// The slot of the request being served on this task.
    static SLOT: Arc<Slot>;
}

/// What the store knows about the request's session. A std mutex: it is held only to copy
/// values in or out, never across an await.
#[derive(Default)]
pub(crate) struct Slot {
    inner: Mutex<SlotState>,
}

#[derive(Default, Clone)]
pub(crate) struct SlotState {
    /// The token to send back (`None`: no session, or it was deleted).
    pub(crate) token: Option<String>,
    /// The session as last read or written in this request.
    pub(crate) loaded: Option<Loaded>,
}

#[derive(Clone)]
pub(crate) struct Loaded {
    pub(crate) id: Id,
    pub(crate) version: u64,
    pub(crate) attrs: Attributes,
}

impl Slot {
    pub(crate) fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The slot of the current request, if the store runs inside [`SessyncLayer`].
    pub(crate) fn current() -> Option<Arc<Slot>> {
        SLOT.try_with(Arc::clone).ok()
    }
}

/// Adds the companion cookie to a service; put it *outside* tower-sessions'
/// `SessionManagerLayer` (in axum: the later `.layer(...)` call).
///
/// The cookie is `HttpOnly`, `SameSite=Lax`, `Path=/`; [`SessyncLayer::secure`] adds
/// `Secure`, and [`SessyncLayer::max_age`] makes it persistent (match it to
/// tower-sessions' expiry; by default it is a browser-session cookie).
#[derive(Debug, Clone)]
pub struct SessyncLayer {
    config: Arc<CookieConfig>,
}

#[derive(Debug, Clone)]
struct CookieConfig {
    name: String,
    secure: bool,
    max_age: Option<std::time::Duration>,
}

impl Default for SessyncLayer {
    fn default() -> Self {
        SessyncLayer::new()
    }
}

impl SessyncLayer {
    /// A layer with the default cookie (`sessync`).
    pub fn new() -> SessyncLayer {
        SessyncLayer {
            config: Arc::new(CookieConfig {
                name: DEFAULT_COOKIE_NAME.to_string(),
                secure: false,
                max_age: None,
            }),
        }
    }

    /// Uses another cookie name (letters, digits, `-` and `_`).
    pub fn name(mut self, name: impl Into<String>) -> SessyncLayer {
        Arc::make_mut(&mut self.config).name = name.into();
        self
    }

    /// Marks the cookie `Secure` (HTTPS only).
    pub fn secure(mut self, secure: bool) -> SessyncLayer {
        Arc::make_mut(&mut self.config).secure = secure;
        self
    }

    /// Makes the cookie persistent for this long.
    pub fn max_age(mut self, max_age: std::time::Duration) -> SessyncLayer {
        Arc::make_mut(&mut self.config).max_age = Some(max_age);
        self
    }
}

impl<S> Layer<S> for SessyncLayer {
    type Service = SessyncService<S>;

    fn layer(&self, inner: S) -> SessyncService<S> {
        SessyncService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service [`SessyncLayer`] makes.
#[derive(Debug, Clone)]
pub struct SessyncService<S> {
    inner: S,
    config: Arc<CookieConfig>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessyncService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let came_with = cookie_value(&req, &self.config.name);
        let slot = Arc::new(Slot::default());
        slot.lock().token = came_with.clone();
        // The inner service may start work in `call` as well as in its future: both run
        // with the slot in scope.
        let fut = SLOT.sync_scope(slot.clone(), || self.inner.call(req));
        let config = self.config.clone();
        Box::pin(async move {
            let mut res = SLOT.scope(slot.clone(), fut).await?;
            let now = slot.lock().token.clone();
            if now != came_with {
                if let Some(header) = set_cookie(&config, now.as_deref()) {
                    res.headers_mut().append(SET_COOKIE, header);
                }
            }
            Ok(res)
        })
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie_value<B>(req: &Request<B>, name: &str) -> Option<String> {
    req.headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

/// `Set-Cookie` for a new token, or a removal for `None`. Tokens are base64url, always a
/// valid cookie value; anything else is not sent.
fn set_cookie(config: &CookieConfig, token: Option<&str>) -> Option<HeaderValue> {
    let mut v = match token {
        Some(t) => format!("{}={t}; Path=/; HttpOnly; SameSite=Lax", config.name),
        None => format!("{}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0", config.name),
    };
    if let (Some(age), Some(_)) = (config.max_age, token) {
        v.push_str(&format!("; Max-Age={}", age.as_secs()));
    }
    if config.secure {
        v.push_str("; Secure");
    }
    HeaderValue::from_str(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_parsing() {
        let req = Request::builder()
            .header(COOKIE, "id=abc; sessync=tok-1")
            .header(COOKIE, "other=x")
            .body(())
            .unwrap();
        assert_eq!(cookie_value(&req, "sessync").as_deref(), Some("tok-1"));
        assert_eq!(cookie_value(&req, "id").as_deref(), Some("abc"));
        assert_eq!(cookie_value(&req, "missing"), None);
        let empty = Request::builder().header(COOKIE, "sessync=").body(()).unwrap();
        assert_eq!(cookie_value(&empty, "sessync"), None);
    }

    #[test]
    fn set_cookie_headers() {
        let c = CookieConfig {
            name: "sessync".into(),
            secure: true,
            max_age: Some(std::time::Duration::from_secs(60)),
        };
        let set = set_cookie(&c, Some("AQ-_x")).unwrap();
        assert_eq!(
            set.to_str().unwrap(),
            "sessync=AQ-_x; Path=/; HttpOnly; SameSite=Lax; Max-Age=60; Secure"
        );
        let del = set_cookie(&c, None).unwrap();
        assert!(del.to_str().unwrap().contains("Max-Age=0"));
    }
}
