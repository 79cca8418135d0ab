use super::*;

#[test]
fn field_paths_flatten_nested_records() -> Result<(), SchemaError> {
    let s = ParsedSchema::from_file(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../schemas/order.avsc"
    )))?;
    let fields = field_paths(&s.canonical);
    let find = |p: &str| fields.iter().find(|f| f.path == p).map(|f| f.ty.as_str());
    assert_eq!(find("value.id"), Some("long"));
    assert_eq!(find("value.status"), Some("enum"));
    assert_eq!(find("value.discount"), Some("null|float"));
    assert_eq!(find("value.ship_to.city"), Some("string"));
    assert_eq!(
        find("value.ship_to"),
        None,
        "a record is flattened, not listed"
    );
    assert_eq!(fields.len(), 18);
    Ok(())
}

#[test]
fn canonical_form_follows_the_spec() -> anyhow::Result<()> {
    let s: Value = serde_json::from_str(
        r#"{"type":"record","name":"R","namespace":"a.b","doc":"x","fields":[
            {"name":"e","type":{"type":"enum","name":"E","symbols":["A","B"]},"default":"A"},
            {"name":"again","type":"E"},
            {"name":"m","type":{"type":"map","values":{"type":"int","logicalType":"date"}}},
            {"name":"f","type":{"type":"fixed","name":"x.F","size":4}}]}"#,
    )?;
    assert_eq!(
        canonical_form(&s)?,
        r#"{"name":"a.b.R","type":"record","fields":[{"name":"e","type":{"name":"a.b.E","type":"enum","symbols":["A","B"]}},{"name":"again","type":"a.b.E"},{"name":"m","type":{"type":"map","values":"int"}},{"name":"f","type":{"name":"x.F","type":"fixed","size":4}}]}"#
    );
    Ok(())
}

#[test]
fn fingerprint_matches_apache_avro() -> anyhow::Result<()> {
    for text in [
        r#""int""#,
        r#"{"type":"record","name":"R","namespace":"n","fields":[{"name":"a","type":["null","string"]},{"name":"b","type":{"type":"array","items":"long"}}]}"#,
    ] {
        let ours = ParsedSchema::parse(text)?.fingerprint;
        let theirs = apache_avro::Schema::parse_str(text)?
            .fingerprint::<apache_avro::rabin::Rabin>()
            .bytes;
        assert_eq!(ours.to_le_bytes().to_vec(), theirs, "{text}");
    }
    Ok(())
}

#[test]
fn recursive_record_compiles() -> anyhow::Result<()> {
    let s = ParsedSchema::parse(
        r#"{"type":"record","name":"List","fields":[{"name":"v","type":"int"},
            {"name":"next","type":["null","List"]}]}"#,
    )?;
    assert!(matches!(s.plan.nodes[s.plan.root], Node::Record(_)));
    Ok(())
}

#[test]
fn unknown_type_is_an_error() {
    let e = ParsedSchema::parse(
        r#"{"type":"record","name":"R","fields":[{"name":"a","type":"Nope"}]}"#,
    );
    assert!(e.is_err());
}
