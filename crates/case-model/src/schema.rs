//! Schema migrations of the case document.
//!
//! | version | change |
//! | --- | --- |
//! | 1 | first layout; the patient's sex held NEMSIS 3.4 `ePatient.13` Gender codes under `patient.gender` |
//! | 2 | `patient.sex` holds `ePatient.25` Sex (3.5.1 deprecates ePatient.13); `gender` is removed |
//!
//! A migration is an ordinary change, so replicas that migrate the same case concurrently
//! write the same values and merge without conflict.

use automerge::ReadDoc;
use automerge::transaction::{Transactable, Transaction};

use crate::codes::Sex;
use crate::fields::FieldValue;
use crate::ids::UserId;
use crate::layout::{self, SCHEMA_VERSION};

/// Brings the document in `tx` up to [`SCHEMA_VERSION`].
pub(crate) fn migrate(tx: &mut Transaction<'_>) -> Result<(), automerge::AutomergeError> {
    let version = layout::get_i64(tx, &automerge::ROOT, layout::SCHEMA).unwrap_or(1);
    if version < 2 {
        v1_to_v2(tx)?;
    }
    tx.put(automerge::ROOT, layout::SCHEMA, SCHEMA_VERSION)?;
    Ok(())
}

/// Maps ePatient.13 Gender to ePatient.25 Sex. The transgender and "other" codes of
/// ePatient.13 do not say the patient's sex, so they become "unknown" (9919005).
fn v1_to_v2(tx: &mut Transaction<'_>) -> Result<(), automerge::AutomergeError> {
    let Some(patient) = layout::walk_maps(tx, &["patient"]) else {
        return Ok(());
    };
    if let Some(rec) = layout::field_at(tx, &patient, "gender") {
        let sex = match &rec.value {
            FieldValue::Text(code) => Some(match code.as_str() {
                "9906001" => Sex::Female,
                "9906003" => Sex::Male,
                _ => Sex::Unknown,
            }),
            _ => None,
        };
        // A `sex` written by a newer replica is a clinician's statement: never overwrite it.
        let already = tx.get(&patient, "sex")?.is_some();
        if let Some(sex) = sex.filter(|_| !already) {
            // The clinical statement stays attributed to the person who made it.
            let by =
                UserId::parse(&rec.by).unwrap_or_else(|_| UserId::parse("system:migration").expect("valid literal"));
            layout::put_field(tx, &patient, "sex", &FieldValue::Text(sex.as_str().into()), &by, rec.at)?;
        }
    }
    if tx.get(&patient, "gender")?.is_some() {
        tx.delete(&patient, "gender")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;

    use crate::layout::{self, put_field};
    use crate::{
        CaseDoc, CaseId, Edit, EditContext, EditError, FieldValue, NewCase, OrgId, Timestamp, UserId, VanId,
        session_actor,
    };

    fn ctx() -> EditContext {
        EditContext { user: UserId::parse("ana").unwrap(), now: Timestamp::from_unix_millis(1_795_000_000_000) }
    }

    /// A case as schema version 1 wrote it: `patient.gender` with an ePatient.13 code.
    fn v1_case(gender_code: &str) -> CaseDoc {
        let new = NewCase {
            id: CaseId::new_v7(ctx().now, [1; 10]),
            org: OrgId::parse("o").unwrap(),
            van: VanId::parse("v").unwrap(),
            temp_patient_id: "T-1".into(),
        };
        let (mut doc, _) = CaseDoc::create(session_actor(&[1; 8], [1; 8]), &ctx(), new);
        let am = doc.automerge_mut();
        let mut tx = am.transaction();
        tx.put(automerge::ROOT, layout::SCHEMA, 1u64).unwrap();
        let patient = layout::walk_maps(&tx, &["patient"]).unwrap();
        put_field(
            &mut tx,
            &patient,
            "gender",
            &FieldValue::Text(gender_code.into()),
            &UserId::parse("ben").unwrap(),
            ctx().now,
        )
        .unwrap();
        tx.commit();
        doc
    }

    #[test]
    fn version_1_gender_migrates_to_version_2_sex_keeping_its_author() {
        for (code, sex) in [("9906001", "female"), ("9906003", "male"), ("9906007", "unknown")] {
            let mut doc = v1_case(code);
            assert_eq!(doc.schema_version(), 1);
            assert!(doc.migrate(&ctx()).unwrap().is_some());
            assert_eq!(doc.schema_version(), 2);
            let view = doc.view();
            assert_eq!(view.fields["patient.sex"]["value"], sex);
            assert_eq!(view.fields["patient.sex"]["by"], "ben");
            assert!(doc.migrate(&ctx()).unwrap().is_none(), "migrating twice does nothing");
        }
    }

    #[test]
    fn two_devices_migrating_the_same_case_do_not_conflict() {
        let doc = v1_case("9906003");
        let mut a = CaseDoc::load(session_actor(&[2; 8], [2; 8]), Some(&doc.save()), []).unwrap();
        let mut b = CaseDoc::load(session_actor(&[3; 8], [3; 8]), Some(&doc.save()), []).unwrap();
        a.migrate(&ctx()).unwrap().unwrap();
        b.migrate(&ctx()).unwrap().unwrap();
        a.merge(&mut b).unwrap();
        assert!(a.conflicts().is_empty(), "{:?}", a.conflicts());
        assert_eq!(a.view().fields["patient.sex"]["value"], "male");
    }

    #[test]
    fn an_old_document_is_refused_for_editing_until_migrated() {
        let mut doc = v1_case("9906003");
        let err = doc.apply(&ctx(), &[Edit::AddChat { text: "hi".into() }]).unwrap_err();
        assert_eq!(err.error, EditError::NeedsMigration { found: 1, current: 2 });
        doc.migrate(&ctx()).unwrap();
        doc.apply(&ctx(), &[Edit::AddChat { text: "hi".into() }]).unwrap();
    }

    #[test]
    fn migration_never_overwrites_a_sex_recorded_under_the_new_schema() {
        let mut doc = v1_case("9906003");
        // A replica already on v2 recorded the patient's sex; its change arrives first.
        let am = doc.automerge_mut();
        let mut tx = am.transaction();
        let patient = layout::walk_maps(&tx, &["patient"]).unwrap();
        put_field(
            &mut tx,
            &patient,
            "sex",
            &FieldValue::Text("female".into()),
            &UserId::parse("dr-osei").unwrap(),
            ctx().now,
        )
        .unwrap();
        tx.commit();
        doc.migrate(&ctx()).unwrap();
        assert_eq!(doc.view().fields["patient.sex"]["value"], "female");
        assert_eq!(doc.view().fields["patient.sex"]["by"], "dr-osei");
    }

    #[test]
    fn a_newer_schema_is_refused_for_editing() {
        let mut doc = v1_case("9906003");
        let am = doc.automerge_mut();
        let mut tx = am.transaction();
        tx.put(automerge::ROOT, layout::SCHEMA, 99u64).unwrap();
        tx.commit();
        let err = doc.apply(&ctx(), &[Edit::AddChat { text: "hi".into() }]).unwrap_err();
        assert_eq!(err.error, EditError::NewerSchema { found: 99, supported: 2 });
        assert!(err.to_string().contains("update Medvan"));
    }
}
