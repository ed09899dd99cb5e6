//! A session's life on this node, in one place: taken by a resume (from a
//! live connection, or parked here or in the presence service), held by
//! its connection, parked when the connection ends, or ended by the API.
//!
//! A connection's [`SessionFate`] says where its session is going: `Held`
//! while it runs; `Parking` once its teardown began to park it; `Parked`
//! when that is done; `Ended` when the API disconnected it. A resume takes
//! a held session over from the live connection (which then does not park
//! it), waits for a park under way and takes the parked copy, and refuses
//! an ended one. The order that makes the race safe: a teardown parks the
//! session before the hub lets go of the connection, so a resume racing it
//! finds the session in one place or the other, never in neither.

use std::sync::Arc;
use std::time::Duration;

use roomcast_protocol::Resume;

use crate::auth::Identity;
use crate::conn_handle::{ConnHandle, SessionFate};
use crate::hub::Hub;

use super::{ParkedSessions, ResumeSigner, Taken};

/// What a session's lifecycle needs of the node, borrowed.
pub struct Lifecycle<'a> {
    pub hub: &'a Hub,
    pub parked: &'a ParkedSessions,
    pub signer: &'a ResumeSigner,
    /// This node's id.
    pub node_id: &'a str,
    /// How long a parked session waits for its resume.
    pub ttl: Duration,
}

/// Longest a resume waits for the old connection's teardown to park the
/// session: longer than a park may take (the presence client's 1 s query
/// timeout).
const PARK_PATIENCE: Duration = Duration::from_secs(2);

/// A session a resume takes.
pub struct Resumed {
    pub session: Arc<str>,
    pub identity: Identity,
    /// Other nodes the presence service lists as holding it.
    pub held_elsewhere: Vec<String>,
}

impl Lifecycle<'_> {
    /// Takes over the session named in `resume` when its token proves it and
    /// the user matches; returns the session id and the identity to use. The
    /// token is checked before the store is touched.
    pub async fn take(&self, resume: &Resume, presented: &Identity) -> Option<Resumed> {
        let here = |session: Arc<str>, identity: Identity| Resumed {
            session,
            identity,
            held_elsewhere: Vec::new(),
        };
        let owner = self.signer.verify(&resume.token, &resume.session)?;
        if !presented.anonymous && *presented.user != *owner {
            return None;
        }
        // A token, when given, brings fresh claims; anonymous resumes keep theirs.
        let pick = |kept: Identity| {
            if presented.anonymous {
                kept
            } else {
                presented.clone()
            }
        };
        // The hub first, then the parked sessions: a connection's teardown
        // parks its session before the hub lets go of it, so a resume racing
        // the teardown finds it in one or the other.
        if let Some(live) = self.hub.by_session(&resume.session) {
            if *live.identity.user != *owner {
                return None;
            }
            match live.take_over() {
                // Taken from the live connection, which will not park it.
                SessionFate::Held => {
                    return Some(here(live.session.clone(), pick(live.current_identity())))
                }
                // Its teardown is parking it: the parked copy is the one to
                // take, once it is there.
                SessionFate::Parking => {
                    self.hub.await_park(&live, PARK_PATIENCE).await;
                    // Disconnected by the API meanwhile: its teardown drops
                    // the copy once the hub has let go of it.
                    if live.fate() == SessionFate::Ended {
                        return None;
                    }
                }
                SessionFate::Parked => {}
                // Disconnected by the API, its close still under way.
                SessionFate::Ended => return None,
            }
        }
        // What the parked store says: `Some(answer)` when it decides the
        // resume (resumed, or refused: ended or another user's), `None` when
        // it holds nothing for the session.
        let parked = |taken: Taken| match taken {
            Taken::Parked(parked) if *parked.user == *owner => {
                Some(Some(here(Arc::from(resume.session.as_str()), pick(parked))))
            }
            Taken::Parked(_) | Taken::Ended => Some(None),
            Taken::Nothing => None,
        };
        if !self.parked.is_remote() {
            return parked(self.parked.take(&resume.session).await).flatten();
        }
        // Cluster: one question asks the parked store and the listing. A
        // session the presence service still lists resumes on the token's
        // word: its node crashed and its lease has not run out yet, or its
        // node still holds it (the client came back here before that node saw
        // its old socket die), and is told it moved. Such a session is claimed
        // for this node before it is taken: the node listing it may still park
        // it (its connection of it ending now, or a drain's park landing late),
        // and a copy parked then would let the session resume a second time
        // while it is live here. The claim refuses that park; one that came
        // first is taken now, and resumes here like any park. The service
        // reads the listing before it takes, and a node parks a session before
        // it unlists it, so a session found unlisted was parked by then, if
        // it was parked at all.
        let first = self.parked.take_or_claim(&resume.session, &owner).await;
        // No presence replica answered: the node took the session from
        // Redis itself, claimed for this node. Parked: it resumes as above.
        // Neither parked nor ended: nothing can tell whether a node lists
        // it (its node crashed, or still holds it), and it resumes on the
        // token's word, as a listed session does; the claim refuses its old
        // node's park should that come later. Only a node that claimed it
        // before can be named to be told it moved. See docs/presence.md,
        // "With presence down".
        if first.direct {
            if let Some(outcome) = parked(first.taken) {
                return outcome;
            }
            let held_elsewhere = first
                .displaced
                .into_iter()
                .filter(|d| *d != *self.node_id)
                .collect();
            return Some(Resumed {
                session: Arc::from(resume.session.as_str()),
                identity: pick(Identity::anonymous_user(&owner)),
                held_elsewhere,
            });
        }
        if let Some(listed) = first.listed {
            if let Some(outcome) = parked(first.taken) {
                return outcome;
            }
            if listed.is_empty() {
                return None;
            }
            let mut held_elsewhere = listed;
            // Another node claimed it before: a resume there on the token's
            // word too, so recent that the service does not list it there yet.
            // It is told the session moved on, like the nodes listing it.
            held_elsewhere.extend(first.displaced.filter(|d| !held_elsewhere.contains(d)));
            held_elsewhere.retain(|n| *n != *self.node_id);
            return Some(Resumed {
                session: Arc::from(resume.session.as_str()),
                identity: pick(Identity::anonymous_user(&owner)),
                held_elsewhere,
            });
        }
        // A service older than that question answered a plain take: the
        // listing and the claim are asked one after the other.
        if let Some(outcome) = parked(first.taken) {
            return outcome;
        }
        let mut held_elsewhere = self.parked.listed_on(&resume.session, &owner).await?;
        if held_elsewhere.is_empty() {
            // Neither parked nor listed: its old node may have moved it from
            // one to the other between the two questions (a draining node
            // parks a session, then drops its listing). That node parks
            // before it unlists, so a session unlisted by now is parked by
            // now, unless it was never parked at all: ask once more.
            return parked(self.parked.take(&resume.session).await).flatten();
        }
        // Claimed before it resumes here, as above.
        let (taken, displaced) = self.parked.claim(&resume.session).await;
        let identity = match taken {
            Taken::Parked(parked) if *parked.user == *owner => pick(parked),
            Taken::Parked(_) | Taken::Ended => return None,
            Taken::Nothing => pick(Identity::anonymous_user(&owner)),
        };
        held_elsewhere.extend(displaced.filter(|d| !held_elsewhere.contains(d)));
        held_elsewhere.retain(|n| *n != *self.node_id);
        Some(Resumed {
            session: Arc::from(resume.session.as_str()),
            identity,
            held_elsewhere,
        })
    }

    /// The end of `conn`'s session on this node, when its connection's task
    /// ends: parked (unless a resume took it over first), then let go of by
    /// the hub, then the parked copy dropped if the API ended the session
    /// meanwhile.
    pub async fn close(&self, conn: &Arc<ConnHandle>) {
        // Parked before the hub lets go of the connection: a resume racing
        // this teardown finds the session in one place or the other (parked,
        // or still live), never in neither. A resume that comes while the
        // park is under way waits for it and resumes the parked copy; one that
        // came before it took the session over, and it is not parked at all
        // (ConnHandle::begin_park).
        if conn.begin_park() {
            Box::pin(
                self.parked
                    .park(conn.session.clone(), conn.current_identity(), self.ttl),
            )
            .await;
            self.hub.park_ended(conn);
        }
        self.hub.unregister(conn);
        // Disconnected by the API while the park was under way: the mark was
        // set while the hub still listed the connection, so it shows here.
        if conn.must_discard() {
            Box::pin(self.parked.discard(&conn.session)).await;
        }
    }
}
