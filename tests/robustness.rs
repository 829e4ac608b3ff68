//! No panic on any input: arbitrary bytes, and the demo snapshot mutated at random (fields
//! deleted, values replaced by other JSON types), all the way through estate, rules and renderers.

use cvm_backup::engine::{evaluate, Policy, Scope};
use cvm_backup::estate::Estate;
use cvm_backup::output::{json_v1, table};
use cvm_backup::rules::Settings;
use cvm_backup::snapshot::Snapshot;
use proptest::prelude::*;
use serde_json::Value;
use time::macros::datetime;

fn demo() -> Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/demo.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn run_all(snap: &Snapshot) {
    let estate = Estate::from_snapshot(snap, None);
    for rs in ["2026-01", "2026-07"] {
        let settings = Settings::from_ruleset(&cvm_backup::ruleset::load(rs).unwrap());
        let policy = Policy::new(datetime!(2026-11-28 0:00 UTC).date());
        let eval = evaluate(
            &estate,
            &settings,
            &policy,
            &Scope::default(),
            datetime!(2026-11-28 0:00 UTC),
        );
        let _ = json_v1::render(&eval.report);
        let _ = table::render(&eval.report, true);
    }
}

/// Every path (as a list of keys/indices) of a JSON value.
fn paths(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                prefix.push(k.clone());
                out.push(prefix.clone());
                paths(c, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                prefix.push(i.to_string());
                out.push(prefix.clone());
                paths(c, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn mutate(v: &mut Value, path: &[String], replacement: Option<Value>) {
    let (last, parent) = path.split_last().unwrap();
    let mut cur = v;
    for k in parent {
        cur = match cur {
            Value::Object(m) => m.get_mut(k).unwrap(),
            Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
            _ => return,
        };
    }
    match (cur, replacement) {
        (Value::Object(m), None) => {
            m.remove(last);
        }
        (Value::Object(m), Some(r)) => {
            m.insert(last.clone(), r);
        }
        (Value::Array(a), None) => {
            a.remove(last.parse::<usize>().unwrap());
        }
        (Value::Array(a), Some(r)) => {
            a[last.parse::<usize>().unwrap()] = r;
        }
        _ => {}
    }
}

fn any_json() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        any::<bool>().prop_map(|b| Some(Value::Bool(b))),
        any::<i64>().prop_map(|i| Some(Value::from(i))),
        "\\PC{0,12}".prop_map(|s| Some(Value::String(s))),
        Just(Some(Value::Array(vec![]))),
        Just(Some(serde_json::json!({"id": "/subscriptions/x"}))),
        Just(Some(serde_json::json!({}))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Snapshot::from_slice(&bytes, "fuzz.json");
    }

    #[test]
    fn mutated_demo_never_panics(picks in proptest::collection::vec((any::<prop::sample::Index>(), any_json()), 1..6)) {
        let mut v = demo();
        for (idx, rep) in picks {
            let mut all = Vec::new();
            paths(&v, &mut Vec::new(), &mut all);
            if all.is_empty() { break; }
            let p = idx.get(&all).clone();
            mutate(&mut v, &p, rep);
        }
        let bytes = serde_json::to_vec(&v).unwrap();
        if let Ok(snap) = Snapshot::from_slice(&bytes, "fuzz.json") {
            run_all(&snap);
        }
    }

    #[test]
    fn truncated_demo_is_an_error_not_a_panic(cut in 0usize..4096) {
        let text = serde_json::to_string(&demo()).unwrap();
        let cut = cut.min(text.len().saturating_sub(1));
        let r = Snapshot::from_slice(&text.as_bytes()[..cut], "cut.json");
        prop_assert!(r.is_err());
    }
}
