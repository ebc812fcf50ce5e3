//! Roles and what they allow (role-based access control). A user holds roles in one
//! organisation; a permission is only ever checked against the caller's own organisation,
//! so no role reaches another organisation's data.

use serde::{Deserialize, Serialize};

/// A role a user can hold in an organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Crew of a van: records cases, on the van and through the hub.
    Paramedic,
    /// Reads and annotates cases and images remotely.
    Doctor,
    /// Creates and assigns calls.
    Dispatcher,
    /// Prepares claims from finished cases.
    BillingClerk,
    /// Runs the organisation's accounts and reads its audit log; no clinical access.
    Admin,
    /// Enrols, updates and retires vans.
    FleetManager,
    /// A patient, for their own record only.
    Patient,
}

/// Something a route needs the caller to be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Read the organisation's cases.
    CaseRead,
    /// Edit the organisation's cases.
    CaseWrite,
    /// Read the organisation's images (DICOMweb retrieve and search, attachments).
    ImageRead,
    /// Store images (DICOMweb STOW).
    ImageWrite,
    /// Read the organisation's audit log.
    AuditRead,
    /// Manage the organisation's accounts.
    UserAdmin,
    /// Manage the organisation's vans.
    FleetAdmin,
    /// Take and answer the organisation's consult requests (go on call, claim).
    ConsultAnswer,
    /// See the organisation's geofences (service areas, hospital approach zones).
    ZoneRead,
    /// Define the organisation's geofences.
    ZoneAdmin,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 7] = [
        Role::Paramedic,
        Role::Doctor,
        Role::Dispatcher,
        Role::BillingClerk,
        Role::Admin,
        Role::FleetManager,
        Role::Patient,
    ];

    /// The role's name, as in tokens and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Role::Paramedic => "paramedic",
            Role::Doctor => "doctor",
            Role::Dispatcher => "dispatcher",
            Role::BillingClerk => "billing_clerk",
            Role::Admin => "admin",
            Role::FleetManager => "fleet_manager",
            Role::Patient => "patient",
        }
    }

    /// A role by name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }

    /// Whether the role needs a second factor (TOTP) to log in.
    pub fn needs_mfa(self) -> bool {
        matches!(self, Role::Doctor | Role::Admin)
    }

    /// What the role allows.
    pub fn permissions(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Role::Paramedic => &[CaseRead, CaseWrite, ImageRead, ZoneRead],
            Role::Doctor => &[CaseRead, CaseWrite, ImageRead, ImageWrite, ConsultAnswer, ZoneRead],
            Role::Dispatcher => &[CaseRead, ZoneRead],
            // Claims come with the billing service; until then a clerk reaches no case.
            Role::BillingClerk => &[],
            Role::Admin => &[AuditRead, UserAdmin, ZoneRead, ZoneAdmin],
            Role::FleetManager => &[FleetAdmin],
            // The patient's own record comes with the patient portal.
            Role::Patient => &[],
        }
    }
}

/// Whether any of `roles` allows `permission`.
pub fn allows(roles: &[Role], permission: Permission) -> bool {
    roles.iter().any(|r| r.permissions().contains(&permission))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_admins_get_no_clinical_access() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.name()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
        assert!(!allows(&[Role::Admin], Permission::CaseRead));
        assert!(!allows(&[Role::Admin, Role::FleetManager], Permission::ImageRead));
        assert!(allows(&[Role::Dispatcher, Role::Admin], Permission::UserAdmin));
        assert!(Role::Doctor.needs_mfa() && Role::Admin.needs_mfa() && !Role::Paramedic.needs_mfa());
    }
}
