//! Lifecycle: created, active, suspended, terminated; and how a controller's state
//! reaches the agents it controls.
//!
//! ```text
//! Created --activate--> Active --suspend--> Suspended --resume--> Active
//!    any state but Terminated --terminate--> Terminated (final)
//! ```
//!
//! - Humans are registered active; agents are registered created and must be
//!   activated. Only a created identity can be activated, only an active one
//!   suspended, only a suspended one resumed.
//! - An agent can be activated or resumed only while its controller is active, so
//!   an active agent always has an active controller (all the way up).
//! - Suspending an identity suspends every *active* agent it controls, transitively,
//!   marked as suspended by cascade (`cascaded_from`: the identity whose suspension
//!   reached it). Created agents stay created; they cannot be activated meanwhile.
//! - Resuming an identity resumes the agents it controls that were suspended by
//!   cascade, transitively; an agent that was suspended on its own stays suspended,
//!   and so do the agents under it. Suspending an agent already suspended by cascade
//!   makes the suspension its own, so resuming the controller then leaves it alone.
//! - Who suspended is recorded ([`Authority`]): a suspension by an admin can be
//!   lifted only by an admin ([`Identities::resume_as`] refuses a controller with
//!   [`Error::AdminSuspended`]). An admin may also take over a suspension a
//!   controller made, so that the controller cannot lift it either.
//! - Terminating (revoking) an identity terminates every agent it controls,
//!   transitively, whatever their state. Terminated is final; the DID stays
//!   registered so it can never be taken again.
//!
//! Each operation returns the DIDs whose state changed, the one asked for first.

use serde::{Deserialize, Serialize};

use crate::did::Did;
use crate::{Error, Identities};

/// Where an identity is in its lifecycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum Status {
    /// Registered, not yet allowed to act (agents start here).
    Created,
    /// May act and sign.
    Active,
    /// Temporarily barred.
    Suspended {
        /// `None` when suspended on its own; otherwise the identity whose suspension
        /// cascaded here (it is resumed with its controller).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cascaded_from: Option<Did>,
        /// Whether an admin suspended it; then only an admin may resume it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        by_admin: bool,
    },
    /// Revoked for good.
    Terminated,
}

impl Status {
    /// The state's name: `created`, `active`, `suspended` or `terminated`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Active => "active",
            Self::Suspended { .. } => "suspended",
            Self::Terminated => "terminated",
        }
    }

    fn suspended_by_cascade(&self) -> bool {
        matches!(
            self,
            Self::Suspended {
                cascaded_from: Some(_),
                ..
            }
        )
    }

    /// Whether an admin suspended it (only an admin may resume it).
    pub fn suspended_by_admin(&self) -> bool {
        matches!(self, Self::Suspended { by_admin: true, .. })
    }
}

/// Who asks for a lifecycle change: an admin of the registry, or a controller of the
/// identity (its owner, directly or through other agents).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authority {
    /// The registry's operator.
    Admin,
    /// A controller of the identity.
    Controller,
}

impl Identities {
    /// Created to active. The controller, if any, must be active.
    pub fn activate(&mut self, did: &Did, now: u64) -> Result<Vec<Did>, Error> {
        match self.status_of(did)? {
            Status::Created => {}
            other => return Err(transition(did, other, "activate")),
        }
        self.require_active_controller(did)?;
        self.set_status(did, Status::Active, now);
        Ok(vec![did.clone()])
    }

    /// Active to suspended by a controller, with every active agent under it (see
    /// the module docs).
    pub fn suspend(&mut self, did: &Did, now: u64) -> Result<Vec<Did>, Error> {
        self.suspend_as(did, Authority::Controller, now)
    }

    /// Active to suspended, recording who suspended, with every active agent under
    /// it. A suspension by cascade becomes its own; an admin may also take over a
    /// controller's own suspension (it then needs an admin to be lifted).
    pub fn suspend_as(&mut self, did: &Did, by: Authority, now: u64) -> Result<Vec<Did>, Error> {
        let own = Status::Suspended {
            cascaded_from: None,
            by_admin: by == Authority::Admin,
        };
        match self.status_of(did)? {
            Status::Active => {}
            // Already suspended by cascade: the suspension becomes its own, and
            // everything under it is suspended already.
            status if status.suspended_by_cascade() => {
                self.set_status(did, own, now);
                return Ok(vec![did.clone()]);
            }
            Status::Suspended {
                by_admin: false, ..
            } if by == Authority::Admin => {
                self.set_status(did, own, now);
                return Ok(vec![did.clone()]);
            }
            other => return Err(transition(did, other, "suspend")),
        }
        self.set_status(did, own, now);
        let mut changed = vec![did.clone()];
        let cascade = Status::Suspended {
            cascaded_from: Some(did.clone()),
            by_admin: false,
        };
        self.cascade(did, |s| *s == Status::Active, &cascade, now, &mut changed);
        Ok(changed)
    }

    /// Suspended to active by a controller, with the agents under it that were
    /// suspended by cascade. The controller, if any, must be active; a suspension by
    /// an admin is refused ([`Error::AdminSuspended`]).
    pub fn resume(&mut self, did: &Did, now: u64) -> Result<Vec<Did>, Error> {
        self.resume_as(did, Authority::Controller, now)
    }

    /// Suspended to active, with the agents under it that were suspended by cascade.
    /// Only an admin lifts an admin's suspension. The controller, if any, must be
    /// active.
    pub fn resume_as(&mut self, did: &Did, by: Authority, now: u64) -> Result<Vec<Did>, Error> {
        match self.status_of(did)? {
            status if status.suspended_by_admin() && by != Authority::Admin => {
                return Err(Error::AdminSuspended(did.clone()));
            }
            Status::Suspended { .. } => {}
            other => return Err(transition(did, other, "resume")),
        }
        self.require_active_controller(did)?;
        self.set_status(did, Status::Active, now);
        let mut changed = vec![did.clone()];
        self.cascade(
            did,
            Status::suspended_by_cascade,
            &Status::Active,
            now,
            &mut changed,
        );
        Ok(changed)
    }

    /// Any state but terminated to terminated, with every agent under it.
    pub fn terminate(&mut self, did: &Did, now: u64) -> Result<Vec<Did>, Error> {
        self.status_of(did)?;
        self.set_status(did, Status::Terminated, now);
        let mut changed = vec![did.clone()];
        self.cascade(
            did,
            |s| *s != Status::Terminated,
            &Status::Terminated,
            now,
            &mut changed,
        );
        Ok(changed)
    }

    /// The state of `did`; an error when it is unknown or terminated.
    fn status_of(&self, did: &Did) -> Result<&Status, Error> {
        let identity = self
            .resolve(did)
            .ok_or_else(|| Error::Unknown(did.clone()))?;
        match identity.status() {
            Status::Terminated => Err(Error::Terminated(did.clone())),
            status => Ok(status),
        }
    }

    fn require_active_controller(&self, did: &Did) -> Result<(), Error> {
        match did.controller() {
            Some(controller) if !self.resolve(controller).is_some_and(|c| c.is_active()) => {
                Err(Error::ControllerInactive {
                    did: did.clone(),
                    controller: controller.clone(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Sets `to` on each agent under `root` whose state passes `applies`, walking down
    /// only through the agents it changed.
    fn cascade(
        &mut self,
        root: &Did,
        applies: impl Fn(&Status) -> bool,
        to: &Status,
        now: u64,
        changed: &mut Vec<Did>,
    ) {
        let mut pending = self.agents_of(root);
        while let Some(did) = pending.pop() {
            if self.resolve(&did).is_some_and(|i| applies(i.status())) {
                self.set_status(&did, to.clone(), now);
                pending.extend(self.agents_of(&did));
                changed.push(did);
            }
        }
    }

    fn agents_of(&self, did: &Did) -> Vec<Did> {
        self.controlled
            .get(did)
            .map(|agents| agents.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn set_status(&mut self, did: &Did, status: Status, now: u64) {
        let Some(identity) = self.identities.get_mut(did) else {
            return;
        };
        let ends = identity.status != Status::Terminated && status == Status::Terminated;
        identity.status = status;
        identity.status_changed_at = now;
        if ends {
            self.count_live(did, false);
        }
    }
}

fn transition(did: &Did, status: &Status, action: &'static str) -> Error {
    Error::Transition {
        did: did.clone(),
        state: status.name(),
        action,
    }
}
