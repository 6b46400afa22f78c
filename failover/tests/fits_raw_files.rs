//! Raw FITS files from simulated pixels and Header Service metadata, checked by two independent
//! readers: `fitsverify` (HEASARC; Debian package `fitsverify`) must report 0 errors and 0
//! warnings, and `tests/fits_check.py` (astropy) must find the expected HDUs, EXTNAMEs, shapes,
//! big-endian `int32` data, keyword values, pixel samples, and verifying CHECKSUM/DATASUM.
//!
//! Neither tool is optional: if one is missing the tests fail with the command that installs it
//! (`scripts/test-all` installs both).
//!
//! The files: the LATISS CCD (ITL, 16 extensions), an LSSTCam wavefront half-sensor (8), an
//! LSSTCam e2v science CCD (16), and an incomplete ITL guider (two segments missing, zero-filled,
//! `INCOMPL = T`). Pixels come from `hw_sim::pixels::SegmentGenerator` in 128-row chunks, like
//! frames, with each chunk's ones'-complement sum combined into the segment's DATASUM.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::process::Command;

use failover::fits::{
    combine, detector_transform, ones_complement_sum, RawFile, SegmentSource, WriteOptions, WriteSummary,
};
use hw_sim::geometry::{Detector, Focalplane, Instrument, RaftId, SensorId, SEGMENT_ROWS};
use hw_sim::header_service::{days_from_civil, Controller, ExposureRequest, HeaderService, ImageType};
use hw_sim::metadata::{KeywordValue, MetadataEvent};
use hw_sim::pixels::{SegmentGenerator, SkyParameters, ROW_SIZE_BYTES};
use serde_json::{json, Map, Value};

/// Rows per chunk handed to the writer (a frame's worth).
const CHUNK_ROWS: u32 = 128;

/// Segments rendered on demand by the pixel simulator; `missing` ones report no sum.
struct SimulatedSegments {
    generators: Vec<SegmentGenerator>,
    missing: Vec<usize>,
    buffer: Vec<u8>,
}

impl SimulatedSegments {
    fn new(detector: &Detector, exposure_id: u64, missing: &[usize]) -> SimulatedSegments {
        let generators = (0..detector.segment_count())
            .map(|index| {
                SegmentGenerator::for_detector(SkyParameters::default(), exposure_id, detector, index)
            })
            .collect();
        SimulatedSegments {
            generators,
            missing: missing.to_vec(),
            buffer: vec![0; CHUNK_ROWS as usize * ROW_SIZE_BYTES],
        }
    }

    fn pixel(&self, index: usize, row: u32, column: usize) -> i32 {
        let mut bytes = vec![0; ROW_SIZE_BYTES];
        self.generators[index].generate_rows(row, 1, &mut bytes);
        i32::from_be_bytes(bytes[column * 4..column * 4 + 4].try_into().expect("4 bytes"))
    }
}

impl SegmentSource for SimulatedSegments {
    fn segment_sum(&mut self, index: usize) -> io::Result<Option<u32>> {
        if self.missing.contains(&index) {
            return Ok(None);
        }
        let mut sum = 0;
        for first_row in (0..SEGMENT_ROWS).step_by(CHUNK_ROWS as usize) {
            self.generators[index].generate_rows(first_row, CHUNK_ROWS, &mut self.buffer);
            sum = combine(sum, ones_complement_sum(&self.buffer));
        }
        Ok(Some(sum))
    }

    fn read_segment(
        &mut self,
        index: usize,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        for first_row in (0..SEGMENT_ROWS).step_by(CHUNK_ROWS as usize) {
            self.generators[index].generate_rows(first_row, CHUNK_ROWS, &mut self.buffer);
            sink(&self.buffer)?;
        }
        Ok(())
    }
}

/// The EndReadout metadata of the first exposure of 2025-04-16 03:00 UTC for `instrument`.
fn end_readout(instrument: Instrument) -> MetadataEvent {
    let start_unix_ns = (days_from_civil(2025, 4, 16) * 86_400 + 3 * 3600) * 1_000_000_000 + 123_456_789;
    let request = ExposureRequest {
        instrument,
        controller: Controller::Ocs,
        start_unix_ns,
        exptime_s: 30.0,
        image_type: ImageType::Science,
        filter: "r_57".to_owned(),
        ra: 150.123456789,
        dec: -30.987654321,
        rotpa: 12.5,
        airmass: 1.0123,
        weather_seed: 7,
    };
    let [_, end] = HeaderService::new().exposure(&request).expect("valid exposure");
    end.to_metadata_event()
}

fn json_value(value: &KeywordValue) -> Value {
    match value {
        KeywordValue::Str(text) => json!(text),
        KeywordValue::Int(integer) => json!(integer),
        KeywordValue::Float(real) => json!(real),
        KeywordValue::Bool(logical) => json!(logical),
    }
}

/// What `fits_check.py` must find in the file.
fn expectations(
    file: &RawFile,
    metadata: &MetadataEvent,
    source: &SimulatedSegments,
    missing: &[usize],
) -> Value {
    let detector = file.detector();
    let mut primary = Map::new();
    for keyword in &metadata.keywords {
        primary.insert(keyword.name.clone(), json_value(&keyword.value));
    }
    let instrume = if detector.instrument() == Instrument::Latiss { "LATISS" } else { "LSSTCam" };
    primary.insert("INSTRUME".into(), json!(instrume));
    primary.insert("FILENAME".into(), json!(file.filename()));
    primary.insert("RAFTBAY".into(), json!(detector.raft().name()));
    primary.insert("CCDSLOT".into(), json!(detector.sensor().name()));
    primary.insert("CCD_MANU".into(), json!(detector.vendor().ccd_manu()));
    primary.insert("DETSIZE".into(), json!(detector.detsize().to_string()));
    primary.insert("BITPIX".into(), json!(8));
    primary.insert("EXTEND".into(), json!(true));
    let mut primary_absent = Vec::new();
    if missing.is_empty() {
        primary_absent.push("INCOMPL");
    } else {
        primary.insert("INCOMPL".into(), json!(true));
    }
    let extensions: Vec<Value> = detector
        .segments()
        .map(|segment| {
            let transform = detector_transform(&segment);
            json!({
                "EXTNAME": segment.extname(),
                "BITPIX": 32,
                "NAXIS1": 576,
                "NAXIS2": 2048,
                "CHANNEL": segment.channel(),
                "DATASEC": segment.datasec(),
                "DETSEC": segment.detsec().to_string(),
                "DETSIZE": detector.detsize().to_string(),
                "DTV1": transform.dtv1,
                "DTV2": transform.dtv2,
                "DTM1_1": transform.dtm1_1 as f64,
                "DTM2_2": transform.dtm2_2 as f64,
                "CCDSUM": "1 1",
            })
        })
        .collect();
    let mut samples = Vec::new();
    for index in (0..detector.segment_count()).filter(|index| !missing.contains(index)) {
        for (row, column) in
            [(0, 0), (0, 575), (1000, 300), (1999, 10), (2047, 575), (517, (index * 31) % 576)]
        {
            samples.push(json!([index + 1, row, column, source.pixel(index, row, column)]));
        }
    }
    let zero_hdus: Vec<usize> = missing.iter().map(|index| index + 1).collect();
    json!({
        "primary": primary,
        "primary_absent": primary_absent,
        "extensions": extensions,
        "samples": samples,
        "zero_hdus": zero_hdus,
    })
}

/// Runs `command`, failing loudly (with how to install it) if it cannot start.
fn run(command: &mut Command, install: &str) -> std::process::Output {
    let program = command.get_program().to_string_lossy().into_owned();
    command.output().unwrap_or_else(|error| {
        panic!(
            "cannot run {program} ({error}); it is required by this test: {install} (scripts/test-all does)"
        )
    })
}

fn fitsverify(path: &Path) {
    let output = run(Command::new("fitsverify").arg(path), "apt-get install -y fitsverify");
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success() && text.contains("Verification found 0 warning(s) and 0 error(s)."),
        "fitsverify {} did not pass cleanly:\n{text}",
        path.display()
    );
}

fn astropy_check(path: &Path, expected: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fits_check.py");
    let output =
        run(Command::new("python3").arg(script).arg(path).arg(expected), "apt-get install -y python3");
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!text.contains("No module named"), "astropy is required: pip install astropy\n{text}");
    assert!(output.status.success(), "astropy check of {} failed:\n{text}", path.display());
}

/// Writes `detector`'s file for `instrument`'s exposure with `missing` segments, then checks it.
fn write_and_check(instrument: Instrument, detector: Detector, missing: &[usize]) -> (PathBuf, WriteSummary) {
    let metadata = end_readout(instrument);
    let file = RawFile::new(detector, &metadata).expect("metadata fits the detector");
    let mut source = SimulatedSegments::new(&detector, metadata.exposure_id, missing);
    let directory = tempfile::tempdir().expect("temp dir").keep();
    let path = directory.join(file.filename());
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&path).expect("create file"));
    let options = WriteOptions { allow_incomplete: !missing.is_empty(), ..WriteOptions::default() };
    let summary = file.write(&mut out, &mut source, &options).expect("file written");
    drop(out);
    let size = std::fs::metadata(&path).expect("file exists").len();
    assert_eq!(size, summary.bytes_written);
    assert_eq!(size, file.size_bytes(missing).expect("size"));
    assert_eq!(summary.missing_segments, missing);

    let expected_path = directory.join("expected.json");
    let expected = expectations(&file, &metadata, &source, missing);
    std::fs::write(&expected_path, serde_json::to_vec_pretty(&expected).expect("JSON")).expect("write JSON");
    fitsverify(&path);
    astropy_check(&path, &expected_path);
    std::fs::remove_dir_all(&directory).expect("clean up");
    (path, summary)
}

fn lsstcam(raft: &str, sensor: SensorId) -> Detector {
    let raft = RaftId::from_name(raft).expect("raft name");
    *Focalplane::lsstcam().detector(raft, sensor).expect("detector exists")
}

#[test]
fn latiss_ccd_passes_fitsverify_and_astropy() {
    let detector = Focalplane::latiss().detectors()[0];
    let (path, summary) = write_and_check(Instrument::Latiss, detector, &[]);
    let name = path.file_name().expect("name").to_string_lossy().into_owned();
    assert!(name.starts_with("AT_O_20250415_") && name.ends_with("_R00_S00.fits"), "{name}");
    assert_eq!(summary.checksums.len(), 17);
}

#[test]
fn lsstcam_wavefront_half_sensor_passes_fitsverify_and_astropy() {
    let (path, summary) =
        write_and_check(Instrument::LsstCam, lsstcam("R04", SensorId::wavefront_half(1)), &[]);
    assert!(path.to_string_lossy().ends_with("_R04_SW1.fits"));
    assert_eq!(summary.checksums.len(), 9);
}

#[test]
fn lsstcam_e2v_science_ccd_passes_fitsverify_and_astropy() {
    let (path, summary) = write_and_check(Instrument::LsstCam, lsstcam("R22", SensorId::science(1, 1)), &[]);
    let name = path.file_name().expect("name").to_string_lossy().into_owned();
    assert!(name.starts_with("MC_O_20250415_") && name.ends_with("_R22_S11.fits"), "{name}");
    assert_eq!(summary.checksums.len(), 17);
}

#[test]
fn incomplete_guider_is_zero_filled_flagged_and_still_valid() {
    let (_, summary) = write_and_check(Instrument::LsstCam, lsstcam("R40", SensorId::guider(0)), &[0, 9]);
    assert_eq!(summary.datasums[1], 0);
    assert_eq!(summary.datasums[10], 0);
}
