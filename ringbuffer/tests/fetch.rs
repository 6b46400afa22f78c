//! `Reader::fetch`: random access to records a reader returned before, validated again, and a
//! clear error once their space was reclaimed.

use ringbuffer::{CreateOptions, Error, FullPolicy, RecordInfo, RecordKind, Ring, RingOptions};

fn payload(index: usize) -> Vec<u8> {
    (0..1000 + index * 977).map(|byte| (byte * 13 + index) as u8).collect()
}

fn create(directory: &tempfile::TempDir, capacity: u64) -> Ring {
    let mut create = CreateOptions::new(capacity, 1);
    create.max_payload_bytes = 64 << 10;
    let options = RingOptions { full_policy: FullPolicy::Reject, ..RingOptions::default() };
    Ring::create(&directory.path().join("ring"), &create, options).expect("create")
}

#[test]
fn records_fetched_out_of_order_are_the_records_read_in_order() {
    let directory = tempfile::tempdir().expect("tempdir");
    let mut ring = create(&directory, 4 << 20);
    for index in 0..20 {
        ring.append_copy(RecordKind::Frame, 0, &payload(index)).expect("append");
    }
    ring.commit().expect("commit");
    let mut reader = ring.reader("drain").expect("reader");
    let mut infos: Vec<RecordInfo> = Vec::new();
    while let Some(record) = reader.next_record().expect("read") {
        assert_eq!(record.payload, &payload(infos.len())[..]);
        infos.push(record.info);
    }
    assert_eq!(infos.len(), 20);
    for (index, info) in infos.iter().enumerate().rev() {
        let record = reader.fetch(info).expect("fetch");
        assert_eq!(record.info, *info);
        assert_eq!(record.payload, &payload(index)[..], "record {index}");
    }
}

#[test]
fn a_record_whose_space_was_reclaimed_cannot_be_fetched() {
    let directory = tempfile::tempdir().expect("tempdir");
    let mut ring = create(&directory, 1 << 20);
    let mut reader = ring.reader("drain").expect("reader");
    ring.append_copy(RecordKind::Frame, 0, &payload(0)).expect("append");
    ring.commit().expect("commit");
    let first = reader.next_record().expect("read").expect("one record").info;
    reader.commit().expect("drain commits past it");
    // Fill the ring until its first record's space is reused.
    let mut index = 1;
    loop {
        match ring.append_copy(RecordKind::Frame, 0, &payload(index % 20)) {
            Ok(_) => {}
            Err(Error::Rejected { .. }) => {
                ring.commit().expect("commit");
                while reader.next_record().expect("read").is_some() {}
                reader.commit().expect("commit cursor");
            }
            Err(other) => panic!("append: {other}"),
        }
        ring.commit().expect("commit");
        index += 1;
        if index > 400 {
            break;
        }
    }
    let error = reader.fetch(&first).expect_err("the first record's space was reused");
    assert!(error.to_string().contains("not in the ring's durable range"), "{error}");
}
