//! [`SessyncStore`]: tower-sessions' storage calls as sessync requests.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sessync_client::{Attributes, Client, ClientError, CreateOptions, ErrorCode, Write};
use time::OffsetDateTime;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store::{Error, Result, SessionStore};

use crate::format::{self, RESERVED};
use crate::layer::{Loaded, Slot};

/// Times a save is merged onto a newer version of the session before it fails.
pub const MAX_MERGES: usize = 3;

/// A tower-sessions store whose sessions live in sessync. Use it with
/// [`SessyncLayer`](crate::SessyncLayer) outside the session layer (see the crate docs).
///
/// # Consistency and conflicts
/// A save writes only the attributes that changed since the load (puts and deletes in one
/// atomic SET), conditional on the version it loaded (compare-and-set). If another request
/// wrote the session in between, the store reads it again and, when the other request
/// changed none of the keys this one changed, applies this request's change on top (at
/// most [`MAX_MERGES`] times): both changes are kept. When both changed the same key, the
/// save fails with a store error, which tower-sessions turns into a `500` response, and
/// this request's change is not written: a silent last-writer-wins would lose the other
/// request's change.
///
/// Errors from the node (unreachable owner, timeouts) are store errors too: tower-sessions
/// answers `500`. A session that no longer exists (expired, destroyed, or a forged cookie)
/// loads as `None`, so tower-sessions starts a new one.
#[derive(Debug, Clone)]
pub struct SessyncStore {
    client: Client,
}

impl SessyncStore {
    /// A store that talks to the node `client` is connected to (normally the node beside
    /// this app server).
    pub fn new(client: Client) -> SessyncStore {
        SessyncStore { client }
    }

    /// The client in use.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

fn slot() -> Result<Arc<Slot>> {
    Slot::current().ok_or_else(|| {
        Error::Backend(
            "SessyncStore used outside SessyncLayer (or on another task than the request's)".into(),
        )
    })
}

fn backend(e: ClientError) -> Error {
    Error::Backend(format!("sessync: {e}"))
}

fn gone(e: &ClientError) -> bool {
    matches!(
        e.code(),
        Some(ErrorCode::SessionNotFound) | Some(ErrorCode::InvalidToken)
    )
}

/// The idle time to live for a record that expires at `expiry`: at least one second.
fn idle_ttl(expiry: OffsetDateTime) -> Duration {
    let secs = (expiry - OffsetDateTime::now_utc()).whole_seconds().max(1);
    Duration::from_secs(u64::try_from(secs).unwrap_or(1))
}

impl SessyncStore {
    async fn create_session(&self, slot: &Slot, record: &Record) -> Result<()> {
        let attrs = format::encode(record)?;
        let options = CreateOptions {
            idle_ttl: Some(idle_ttl(record.expiry_date)),
            max_lifetime: None,
        };
        let s = self
            .client
            .create_with(attrs.clone(), options)
            .await
            .map_err(backend)?;
        let mut st = slot.lock();
        st.token = Some(s.token.clone());
        st.loaded = Some(Loaded {
            id: record.id,
            version: s.version(),
            attrs,
        });
        Ok(())
    }

    /// Writes `new` over `loaded` with compare-and-set, merging as the type docs say.
    /// Returns the token, version and attributes after the write.
    async fn write_merged(
        &self,
        mut token: String,
        loaded: Loaded,
        new: &Attributes,
    ) -> Result<(String, u64, Attributes)> {
        let (mut puts, mut deletes) = format::diff(&loaded.attrs, new);
        let mine: BTreeSet<String> = puts.keys().cloned().chain(deletes.iter().cloned()).collect();
        let (mut version, mut base) = (loaded.version, loaded.attrs);
        let mut merges = 0;
        loop {
            if puts.is_empty() && deletes.is_empty() {
                return Ok((token, version, base));
            }
            let write = Write {
                puts: puts.clone(),
                deletes: deletes.clone(),
                if_version: Some(version),
            };
            match self.client.write(&token, write).await {
                Ok(s) => {
                    for (k, v) in puts {
                        base.insert(k, v);
                    }
                    for k in &deletes {
                        base.remove(k);
                    }
                    let version = s.version();
                    return Ok((s.token, version, base));
                }
                Err(e) if e.code() == Some(ErrorCode::VersionConflict) && merges < MAX_MERGES => {
                    merges += 1;
                    let fresh = self.client.get(&token).await.map_err(backend)?;
                    // Keys this request changed that the other writer changed too, to a
                    // different value. The reserved id and expiry are this request's to set.
                    let clash: Vec<&String> = mine
                        .iter()
                        .filter(|k| !k.starts_with(RESERVED))
                        .filter(|k| fresh.attributes.get(*k) != base.get(*k))
                        .filter(|k| fresh.attributes.get(*k) != new.get(*k))
                        .collect();
                    if !clash.is_empty() {
                        return Err(Error::Backend(format!(
                            "sessync: session conflict: another request changed {clash:?} meanwhile"
                        )));
                    }
                    token = fresh.token;
                    version = fresh.meta.version;
                    base = fresh.attributes;
                    puts = mine
                        .iter()
                        .filter_map(|k| new.get(k).map(|v| (k.clone(), v.clone())))
                        .filter(|(k, v)| base.get(k) != Some(v))
                        .collect();
                    deletes = mine
                        .iter()
                        .filter(|k| !new.contains_key(*k) && base.contains_key(*k))
                        .cloned()
                        .collect();
                }
                Err(e) => return Err(backend(e)),
            }
        }
    }
}

#[async_trait]
impl SessionStore for SessyncStore {
    async fn create(&self, record: &mut Record) -> Result<()> {
        // The id is tower-sessions' own 128 random bits; sessync's session id (in the token)
        // is drawn by the node, so neither can collide with an existing session.
        let slot = slot()?;
        self.create_session(&slot, record).await
    }

    async fn save(&self, record: &Record) -> Result<()> {
        let slot = slot()?;
        let (token, loaded) = {
            let st = slot.lock();
            (st.token.clone(), st.loaded.clone())
        };
        let (Some(token), Some(loaded)) = (token, loaded) else {
            return self.create_session(&slot, record).await;
        };
        if loaded.id != record.id {
            return self.create_session(&slot, record).await;
        }
        let id = loaded.id;
        let new = format::encode(record)?;
        match self.write_merged(token, loaded, &new).await {
            Ok((token, version, attrs)) => {
                let mut st = slot.lock();
                st.token = Some(token);
                st.loaded = Some(Loaded { id, version, attrs });
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn load(&self, id: &Id) -> Result<Option<Record>> {
        let slot = slot()?;
        let token = slot.lock().token.clone();
        let Some(token) = token else {
            return Ok(None);
        };
        match self.client.get(&token).await {
            Ok(s) => {
                let record = format::decode(id, &s.attributes, OffsetDateTime::now_utc())?;
                let mut st = slot.lock();
                // A moved session comes with a new token: the layer sends it to the browser.
                st.token = Some(s.token.clone());
                st.loaded = record.as_ref().map(|_| Loaded {
                    id: *id,
                    version: s.version(),
                    attrs: s.attributes.clone(),
                });
                Ok(record)
            }
            Err(e) if gone(&e) => {
                let mut st = slot.lock();
                st.token = None;
                st.loaded = None;
                Ok(None)
            }
            Err(e) => Err(backend(e)),
        }
    }

    async fn delete(&self, id: &Id) -> Result<()> {
        let slot = slot()?;
        let (token, loaded_id) = {
            let st = slot.lock();
            (st.token.clone(), st.loaded.as_ref().map(|l| l.id))
        };
        let Some(token) = token else {
            return Ok(());
        };
        if loaded_id.is_some_and(|l| l != *id) {
            // The token names another session than the one tower-sessions deletes.
            return Ok(());
        }
        match self.client.destroy(&token).await {
            Ok(()) => {}
            Err(e) if gone(&e) => {}
            Err(e) => return Err(backend(e)),
        }
        let mut st = slot.lock();
        st.token = None;
        st.loaded = None;
        Ok(())
    }
}
