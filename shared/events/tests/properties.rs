//! Property tests for the input edges: the stream-id parser and event validation must never
//! panic, must accept exactly the documented forms, and must be stable under canonicalisation.

use proptest::prelude::*;
use rig_events::validate;
use rig_events::StreamId;
use serde_json::{json, Value};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::hash_map("[a-z_]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const KNOWN: &[&str] = &[
    "ISSUE_APPROVED",
    "ISSUE_ASSIGNED",
    "ISSUE_UNASSIGNED",
    "WORK_STARTED",
    "HEARTBEAT",
    "AGENT_STUCK",
    "BRANCH_CREATED",
    "PR_CREATED",
    "CI_PASSED",
    "CI_FAILED",
    "REVIEW_ASSIGNED",
    "REVIEW_PASSED",
    "REVIEW_DISPUTED",
    "HUMAN_GATE_TRIGGERED",
    "ESCALATED",
    "MERGED",
    "ISSUE_DONE",
    "TOKEN_USAGE",
];

proptest! {
    #[test]
    fn stream_id_parser_never_panics_and_round_trips(s in ".{0,80}") {
        if let Ok(id) = StreamId::parse(&s) {
            let canonical = id.to_string();
            let again = StreamId::parse(&canonical).expect("a canonical id parses");
            prop_assert_eq!(again.to_string(), canonical.clone());
            prop_assert!(canonical.starts_with("agent:") || canonical.contains('#'));
        }
    }

    #[test]
    fn issue_stream_ids_are_case_insensitive(owner in "[A-Za-z0-9-]{1,39}", repo in "[A-Za-z0-9._-]{1,100}", n in 1i64..1_000_000_000) {
        prop_assume!(repo != "." && repo != "..");
        let a = StreamId::parse(&format!("{owner}/{repo}#{n}")).expect("valid issue id");
        let b = StreamId::parse(&format!("{}/{}#{n}", owner.to_lowercase(), repo.to_uppercase())).expect("valid issue id");
        prop_assert_eq!(a.to_string().to_lowercase(), a.to_string());
        prop_assert_eq!(a, b);
    }

    #[test]
    fn validation_never_panics_on_any_data(ty in prop::sample::select(KNOWN), data in arb_json()) {
        let _ = validate(ty, &data);
    }

    #[test]
    fn validation_rejects_non_objects(ty in prop::sample::select(KNOWN), data in arb_json()) {
        prop_assume!(!data.is_object());
        prop_assert!(validate(ty, &data).is_err());
    }

    #[test]
    fn types_must_be_upper_snake(ty in "[A-Za-z_0-9 -]{0,20}") {
        let ok = validate(&ty, &json!({})).is_ok() || rig_events::is_known_type(&ty);
        let upper_snake = !ty.is_empty()
            && ty.as_bytes()[0].is_ascii_uppercase()
            && !ty.ends_with('_')
            && !ty.contains("__")
            && ty.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !upper_snake {
            prop_assert!(!ok, "{:?} accepted", ty);
        }
    }

    #[test]
    fn token_usage_with_valid_counts_passes(input in 0i64..=rig_events::MAX_TOKENS, output in 0i64..1_000_000_000, cost in 0u32..1_000_000) {
        let data = json!({"agent_id": "a", "model": "m", "input_tokens": input, "output_tokens": output,
                          "cost_usd": format!("{}.{:02}", cost / 100, cost % 100)});
        prop_assert!(validate("TOKEN_USAGE", &data).is_ok());
        let mut bad = data.clone();
        bad["input_tokens"] = json!(-1 - (input % 1000));
        prop_assert!(validate("TOKEN_USAGE", &bad).is_err());
        bad["input_tokens"] = json!(rig_events::MAX_TOKENS + 1 + input);
        prop_assert!(validate("TOKEN_USAGE", &bad).is_err());
    }
}
