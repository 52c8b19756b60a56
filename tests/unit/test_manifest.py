"""Parsing the factory manifest: what is accepted, and every refusal with its line."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fleet.admin.routes import _text as admin_text
from fleet.kernel.errors import FleetError, ManifestInvalid
from fleet.manifest import MAX_LINES, parse_manifest
from fleet.records import ManifestEntry, Manufacturer
from fleet.ui.pages import text as console_text

HEADER = "device_id,bootstrap_sha256,model,batch"
PIN_A = "a" * 64
PIN_B = "b" * 64
PIN_C = "0123456789abcdef" * 4


def refusal(text: str) -> ManifestInvalid:
    with pytest.raises(ManifestInvalid) as caught:
        parse_manifest(text)
    return caught.value


def test_a_plain_manifest() -> None:
    text = f"{HEADER}\nsensor-1,{PIN_A},TH-200,2026-W22\nsensor-2,{PIN_B},,\n"
    assert parse_manifest(text) == [
        ManifestEntry("sensor-1", PIN_A, "TH-200", "2026-W22"),
        ManifestEntry("sensor-2", PIN_B, "", ""),
    ]


def test_bom_comments_blank_lines_whitespace_crlf_and_openssl_fingerprints() -> None:
    openssl_style = ":".join(PIN_C[i : i + 2] for i in range(0, 64, 2)).upper()
    text = (
        "\ufeff# shipped 2026-06-01\r\n"
        f" Device_ID , bootstrap_sha256 ,model, batch \r\n"
        "\r\n"
        "   # a comment after the header\r\n"
        f"  sensor-1 ,  {openssl_style} ,  TH 200 , \r\n"
        f'sensor-2,{PIN_B},"Model, with comma",b7\r\n'
        f"sensor-3,{PIN_A}\r\n"
    )
    assert parse_manifest(text) == [
        ManifestEntry("sensor-1", PIN_C, "TH 200", ""),
        ManifestEntry("sensor-2", PIN_B, "Model, with comma", "b7"),
        ManifestEntry("sensor-3", PIN_A, "", ""),
    ]


def test_header_only_is_an_empty_manifest() -> None:
    assert parse_manifest(HEADER + "\n") == []


@pytest.mark.parametrize("text", ["", "\ufeff", "# only a comment\n\n"])
def test_no_header_at_all(text: str) -> None:
    error = refusal(text)
    assert error.line is None
    assert "empty" in error.message
    assert HEADER in error.message


def test_missing_header_names_the_first_line() -> None:
    error = refusal(f"# comment\nsensor-1,{PIN_A},m,b\n")
    assert error.line == 2
    assert error.message.startswith("line 2: missing or wrong header")
    assert HEADER in error.hint


@pytest.mark.parametrize(
    "header", ["device_id,sha256,model,batch", "device_id,bootstrap_sha256", HEADER + ",extra"]
)
def test_wrong_header(header: str) -> None:
    assert refusal(f"{header}\nsensor-1,{PIN_A}\n").line == 1


@pytest.mark.parametrize(
    ("bad_id", "words"),
    [
        ("a/b", "'/'"),
        ("admin", "reserved"),
        ("x" * 65, "maximum is 64"),
        ("caf\u00e9", "U+00E9"),
        ("", "empty"),
    ],
)
def test_bad_device_id_names_its_line(bad_id: str, words: str) -> None:
    error = refusal(f"{HEADER}\nsensor-1,{PIN_A}\n{bad_id},{PIN_B}\n")
    assert error.line == 3
    assert error.message.startswith("line 3: ")
    assert words in error.message
    assert "A-Z a-z 0-9" in error.hint
    assert isinstance(error, FleetError)  # CLIs exit 1 with diagnostics; the API answers 400


@pytest.mark.parametrize(
    ("pin", "words"),
    [("abc", "3 hex digits"), ("g" * 64, "non-hex"), ("", "empty bootstrap_sha256")],
)
def test_fingerprint_not_64_hex(pin: str, words: str) -> None:
    error = refusal(f"{HEADER}\n\nsensor-1,{pin},m,b\n")
    assert error.line == 3
    assert words in error.message
    assert "sensor-1" in error.message


def test_duplicate_device_id_names_both_lines() -> None:
    error = refusal(f"{HEADER}\nsensor-1,{PIN_A}\nsensor-2,{PIN_B}\nsensor-1,{PIN_C}\n")
    assert error.line == 4
    assert "listed twice (first on line 2)" in error.message


def test_duplicate_fingerprint_is_a_cloned_factory_identity() -> None:
    upper = PIN_A.upper()
    error = refusal(f"{HEADER}\nsensor-1,{PIN_A}\nsensor-2,{upper}\n")
    assert error.line == 3
    assert "'sensor-1' (line 2)" in error.message
    assert "clone" in error.message


def test_too_many_and_too_few_columns() -> None:
    assert refusal(f"{HEADER}\nsensor-1,{PIN_A},m,b,extra\n").line == 2
    assert "5 columns" in refusal(f"{HEADER}\nsensor-1,{PIN_A},m,b,extra\n").message
    assert refusal(f"{HEADER}\nsensor-1\n").line == 2


def test_broken_quoting_and_control_characters() -> None:
    assert refusal(f'{HEADER}\nsensor-1,{PIN_A},"unterminated\n').line == 2
    error = refusal(f"{HEADER}\nsensor-1,{PIN_A},ok,bad\u202ebatch\n")
    assert error.line == 2
    assert "U+202E" in error.message
    assert refusal(f"{HEADER}\nsensor-1,{PIN_A},{'m' * 129}\n").line == 2


def test_more_than_the_maximum_number_of_lines() -> None:
    rows = "\n".join(f"d{i},{i:064x}" for i in range(MAX_LINES))  # header + MAX_LINES rows
    error = refusal(f"{HEADER}\n{rows}\n")
    assert str(MAX_LINES) in error.message
    assert error.line is None


def test_the_maximum_number_of_lines_is_accepted() -> None:
    rows = "\n".join(f"d{i},{i:064x}" for i in range(MAX_LINES - 1))
    assert len(parse_manifest(f"{HEADER}\n{rows}\n")) == MAX_LINES - 1


@pytest.mark.parametrize(
    "text",
    [
        "",
        f"sensor-1,{PIN_A}",
        f"{HEADER}\nbad/id,{PIN_A}",
        f"{HEADER}\nsensor-1,xyz",
        f"{HEADER}\nsensor-1,{PIN_A}\nsensor-2,{PIN_A}",
        f"{HEADER}\nsensor-1,{PIN_A},m,b,c",
    ],
)
def test_diagnostics_say_nothing_was_imported(text: str) -> None:
    assert "nothing was imported" in refusal(text).diagnostics().lower()


def test_a_manifest_may_name_each_devices_manufacturer_ca() -> None:
    text = (
        f"{HEADER},manufacturer_sha256\n"
        f"sensor-1,{PIN_A},TH-200,w22,{PIN_C.upper()}\nsensor-2,{PIN_B}\n"
    )
    assert parse_manifest(text) == [
        ManifestEntry("sensor-1", PIN_A, "TH-200", "w22", Manufacturer(PIN_C)),
        ManifestEntry("sensor-2", PIN_B, "", ""),
    ]
    assert refusal(f"{HEADER},manufacturer_sha256\nsensor-1,{PIN_A},,,abc\n").line == 2
    # Without the column in the header a fifth cell is still one too many.
    assert "at most 4" in refusal(f"{HEADER}\nsensor-1,{PIN_A},,,{PIN_C}\n").message


# Found from outside: a model or batch with a no-break space (as spreadsheets
# write it) or U+2028 was imported, and then refused by the admin API's and the
# console's filters ("must be printable text"): those devices could not be
# listed or bulk-revoked by their batch. Both ends now apply label_problem.
@given(st.text(max_size=140))
@example("TH\u00a0200")
@example("lot\u20287")
@example("w22 \u3000")
def test_every_model_and_batch_the_manifest_takes_can_be_named_in_a_filter(value: str) -> None:
    line = f"{HEADER}\nsensor-1,{PIN_A},{_csv_cell(value)},{_csv_cell(value)}\n"
    try:
        (entry,) = parse_manifest(line)
    except ManifestInvalid:
        return
    for text in (entry.model, entry.batch):
        if text:
            assert admin_text({"model": text}, "model") == text
            assert console_text({"batch": text}, "batch") == text


def _csv_cell(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


# Found from outside: a 32 MiB manifest (the API's limit) of line breaks, or of commas
# on one line, was split into 33 million strings or cells (300-600 MB, seconds of
# CPU on the server's event loop) before being refused.
@pytest.mark.parametrize(
    "text",
    [
        "\n" * (32 << 20),
        "\r" * (32 << 20),
        f"{HEADER}\n" + "," * (32 << 20),
        f"{HEADER}\nsensor-1,{PIN_A}," + '"' + "m" * (32 << 20) + '"\n',
    ],
    ids=["newlines", "carriage-returns", "commas", "one-huge-cell"],
)
def test_a_huge_manifest_is_refused_before_it_is_split(text: str) -> None:
    tracemalloc.start()
    try:
        error = refusal(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "lines" in error.message or "characters long" in error.message
    assert peak < 48 << 20, f"peak {peak >> 20} MiB while refusing"  # one copy of a line at most
