#!/usr/bin/env python3
"""Checks a raw FITS file written by failover::fits against expectations, with astropy.

Usage: fits_check.py FILE EXPECTED.json

EXPECTED.json (written by failover/tests/fits_raw_files.rs) holds the primary keywords, the
extensions' EXTNAMEs and keywords, pixel samples and the missing segments. Every astropy warning
is an error, so a CHECKSUM or DATASUM mismatch (which astropy reports as a warning) fails the
check. Exits 0 when everything matches, 1 with a message per mismatch otherwise.
"""
import json
import sys
import warnings

import numpy as np
from astropy.io import fits

failures = []


def check(condition, message):
    if not condition:
        failures.append(message)


def main(path, expected_path):
    with open(expected_path) as handle:
        expected = json.load(handle)
    warnings.simplefilter("error")
    warnings.simplefilter("ignore", ResourceWarning)
    with fits.open(path, checksum=True, memmap=False) as hdus:
        extensions = expected["extensions"]
        check(len(hdus) == 1 + len(extensions), f"{len(hdus)} HDUs, expected {1 + len(extensions)}")
        primary = hdus[0]
        check(primary.header["NAXIS"] == 0, "primary NAXIS is not 0")
        check(primary.data is None, "primary HDU has data")
        for keyword, value in expected["primary"].items():
            found = primary.header.get(keyword)
            check(found == value and type(found) is type(value),
                  f"primary {keyword} = {found!r}, expected {value!r}")
        for keyword in expected.get("primary_absent", []):
            check(keyword not in primary.header, f"primary has {keyword}")
        for position, hdu in enumerate(hdus):
            # 1: present and correct; 0: wrong; 2: missing.
            check(hdu.verify_checksum() == 1, f"HDU {position}: CHECKSUM does not verify")
            check(hdu.verify_datasum() == 1, f"HDU {position}: DATASUM does not verify")
        for position, extension in enumerate(extensions, start=1):
            if position >= len(hdus):
                break
            hdu = hdus[position]
            name = extension["EXTNAME"]
            check(isinstance(hdu, fits.ImageHDU), f"HDU {position} is {type(hdu).__name__}")
            check(hdu.header["EXTNAME"] == name,
                  f"HDU {position} EXTNAME {hdu.header.get('EXTNAME')!r}, expected {name!r}")
            check(hdu.data.shape == (2048, 576), f"{name}: shape {hdu.data.shape}")
            check(hdu.data.dtype == np.dtype(">i4"), f"{name}: dtype {hdu.data.dtype}")
            for keyword, value in extension.items():
                found = hdu.header.get(keyword)
                check(found == value and type(found) is type(value),
                      f"{name} {keyword} = {found!r}, expected {value!r}")
        for position, row, column, value in expected["samples"]:
            found = int(hdus[position].data[row, column])
            check(found == value, f"HDU {position} pixel [{row}, {column}] = {found}, expected {value}")
        for position in expected["zero_hdus"]:
            check(not hdus[position].data.any(), f"HDU {position} (missing segment) is not all zeros")


if __name__ == "__main__":
    try:
        main(sys.argv[1], sys.argv[2])
    except Exception as error:  # a warning turned error (checksum), an unreadable file, ...
        failures.append(f"{type(error).__name__}: {error}")
    for failure in failures:
        print(f"fits_check: {failure}", file=sys.stderr)
    if failures:
        sys.exit(1)
    print(f"fits_check: {sys.argv[1]} OK")
