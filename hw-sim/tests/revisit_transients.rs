//! End to end through the camera driver: a revisit pair of R22 with transients on half of the
//! detectors, read back from the frame stream as a first-look check would: every transient is at
//! the site the plan reports in the second visit and absent from the first, the difference image
//! of the pair holds nothing else, and any frame regenerates from the plan alone.

use std::collections::HashMap;

use hw_sim::driver::{play, raft_wire_code, segment_wire_code, sensor_wire_code, PlayOptions};
use hw_sim::frame::{decode_frame, frame_length_bytes, FRAME_HEADER_BLOCK_BYTES};
use hw_sim::geometry::{Focalplane, Instrument, SEGMENT_COLUMNS, SEGMENT_ROWS, SEGMENT_SIZE_BYTES};
use hw_sim::night::{NightPlan, NightSchedule, RevisitPlan};
use hw_sim::pixels::{transient_site, SegmentGenerator, SkyParameters};
use hw_sim::transport::FrameSink;

/// 2025-04-15T23:00:00Z.
const START_UNIX_NS: i64 = 1_744_758_000_000_000_000;
const COLUMNS: usize = SEGMENT_COLUMNS as usize;
const FLUX_ADU: f64 = 60_000.0;

/// Hands every frame to a closure, so the 1.4 GB of the pair is checked without being stored.
struct Inspect<F: FnMut(&[u8])>(F);

impl<F: FnMut(&[u8])> FrameSink for Inspect<F> {
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        (self.0)(frame);
        Ok(())
    }
}

#[test]
fn a_revisit_pair_shows_each_transient_at_its_reported_site_and_nothing_else() {
    let lsstcam = Focalplane::lsstcam_subset(&["R22"]).unwrap();
    let latiss = Focalplane::latiss();
    let revisits = RevisitPlan { transient_flux_adu: FLUX_ADU, transient_detector_fraction: 0.5 };
    let plan = NightPlan {
        frames_per_segment: 2,
        revisits: Some(revisits),
        ..NightPlan::baseline(START_UNIX_NS, 2, 3)
    };
    // No cosmic rays, so that the difference of the two visits is pure noise but for the transient.
    let sky = SkyParameters { cosmic_rays_per_segment: 0, seed: 77, ..SkyParameters::default() };
    let schedule = NightSchedule::new(plan, &lsstcam, &latiss).unwrap();

    let sites = plan.transient_sites(sky.seed, Instrument::LsstCam, 1, &lsstcam);
    let chosen_detectors: std::collections::HashSet<usize> = sites.iter().map(|s| s.detector).collect();
    assert!((2..=7).contains(&chosen_detectors.len()), "{} of 9 detectors chosen", chosen_detectors.len());
    assert_eq!(sites.len(), chosen_detectors.len() * 16);
    assert!(plan.transient_sites(sky.seed, Instrument::LsstCam, 0, &lsstcam).is_empty());
    let field_id = plan.field_id(Instrument::LsstCam, 0).unwrap();
    assert_eq!(plan.field_id(Instrument::LsstCam, 1), Some(field_id));

    // Wire codes back to (detector index, segment index).
    let mut by_wire = HashMap::new();
    for (index, detector) in lsstcam.detectors().iter().enumerate() {
        for (segment_index, segment) in detector.segments().enumerate() {
            let key = (raft_wire_code(detector.raft()), sensor_wire_code(detector.sensor()));
            by_wire.insert((key.0, key.1, segment_wire_code(&segment)), (index, segment_index));
        }
    }
    // The site of every segment (chosen or not), and the pixel there in each visit.
    let site_of = |detector: usize, segment: usize| {
        let geometry = &lsstcam.detectors()[detector];
        transient_site(sky.seed, field_id, &geometry.to_string(), segment, geometry.vendor())
    };
    let watched = (sites[0].detector, sites[0].segment);
    let mut site_values: HashMap<(usize, usize, usize), i32> = HashMap::new();
    let mut watched_images =
        [vec![0i32; COLUMNS * SEGMENT_ROWS as usize], vec![0; COLUMNS * SEGMENT_ROWS as usize]];
    let mut exposure_ids = Vec::new();
    let mut regenerated = 0;
    let mut inspect = Inspect(|frame: &[u8]| {
        assert!(frame.len() <= frame_length_bytes(SEGMENT_SIZE_BYTES));
        let decoded = decode_frame(frame).unwrap();
        let exposure_id = decoded.exposure_id.get();
        if !exposure_ids.contains(&exposure_id) {
            exposure_ids.push(exposure_id);
        }
        let visit = exposure_ids.iter().position(|&id| id == exposure_id).unwrap();
        let (detector, segment) = by_wire[&(decoded.raft, decoded.sensor, decoded.segment)];
        let first_row = decoded.first_row.get() as usize;
        let row_count = decoded.row_count.get() as usize;
        let payload = &frame[FRAME_HEADER_BLOCK_BYTES..][..row_count * COLUMNS * 4];
        let pixel = |row: usize, column: usize| {
            let offset = ((row - first_row) * COLUMNS + column) * 4;
            i32::from_be_bytes(payload[offset..offset + 4].try_into().unwrap())
        };
        let site = site_of(detector, segment);
        if (first_row..first_row + row_count).contains(&(site.row as usize)) {
            site_values.insert((visit, detector, segment), pixel(site.row as usize, site.column as usize));
        }
        if (detector, segment) == watched {
            for row in first_row..first_row + row_count {
                for column in 0..COLUMNS {
                    watched_images[visit][row * COLUMNS + column] = pixel(row, column);
                }
            }
        }
        // A verifier needs nothing but the plan and the sky to regenerate the frame.
        if detector % 4 == 0 && segment % 5 == 0 {
            let geometry = &lsstcam.detectors()[detector];
            let scene = plan.scene(Instrument::LsstCam, visit as u32, &geometry.to_string());
            let generator =
                SegmentGenerator::for_detector_in_scene(sky, scene, exposure_id, geometry, segment);
            let mut expected = vec![0u8; payload.len()];
            generator.generate_rows(first_row as u32, row_count as u32, &mut expected);
            assert!(expected == payload, "frame of {detector}/{segment} does not regenerate");
            regenerated += 1;
        }
    });
    play(schedule, &mut inspect, PlayOptions::new(sky)).unwrap();
    assert_eq!(exposure_ids.len(), 2);
    assert!(regenerated > 20);
    assert_eq!(site_values.len(), 2 * 144);

    // Every transient: far above the first visit's pixel at its site; elsewhere nothing changes.
    for location in &sites {
        let site = site_of(location.detector, location.segment);
        assert_eq!((location.row, location.column), (site.row, site.column));
        let first = site_values[&(0, location.detector, location.segment)];
        let second = site_values[&(1, location.detector, location.segment)];
        assert!(second - first > 2_000, "{location:?}: {first} then {second}");
    }
    for detector in (0..9).filter(|detector| !chosen_detectors.contains(detector)) {
        for segment in 0..16 {
            let (first, second) =
                (site_values[&(0, detector, segment)], site_values[&(1, detector, segment)]);
            assert!(
                (second - first).abs() < 300,
                "no transient on {detector}/{segment}: {first} then {second}"
            );
        }
    }

    // The difference image of the watched segment: noise everywhere but at the transient.
    let site = site_of(watched.0, watched.1);
    let difference: Vec<f64> =
        watched_images[1].iter().zip(&watched_images[0]).map(|(b, a)| f64::from(b - a)).collect();
    let near_site = |index: usize| {
        let (row, column) = (index / COLUMNS, index % COLUMNS);
        row.abs_diff(site.row as usize) <= 12 && column.abs_diff(site.column as usize) <= 12
    };
    let elsewhere: Vec<f64> =
        difference.iter().enumerate().filter(|(i, _)| !near_site(*i)).map(|(_, &d)| d).collect();
    let mean = elsewhere.iter().sum::<f64>() / elsewhere.len() as f64;
    let sigma = (elsewhere.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / elsewhere.len() as f64).sqrt();
    let largest = elsewhere.iter().fold(0.0f64, |largest, d| largest.max(d.abs()));
    assert!(mean.abs() < 0.5 && sigma > 5.0 && sigma < 60.0, "difference mean {mean}, sigma {sigma}");
    assert!(largest < 7.0 * sigma, "a residual of {largest} ADU (sigma {sigma}) away from the transient");
    let centre = difference[site.row as usize * COLUMNS + site.column as usize];
    assert!(centre > 50.0 * sigma, "transient {centre} ADU over a difference sigma of {sigma}");
}
