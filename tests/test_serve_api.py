"""The clinic service's REST API through FastAPI's TestClient on SQLite: happy path, every hostile-input error,
token on/off, reviews, the audit trail after a restart, webhook alerts, the UI and the model card.

The model is the shipped models/default on the PyTorch backend (no ONNX export needed here; the ONNX path is
tested in test_serve_onnx.py)."""

from __future__ import annotations

import io
import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from melanoma.images import load_image
from melanoma.serve.app import STATIC, create_app
from melanoma.serve.inference import load_model
from melanoma.serve.settings import Settings
from melanoma.serve.testing import REPO_MODEL


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """The shipped model loaded once for every app of this module (torch backend, CPU)."""
    return load_model(REPO_MODEL, "torch", tmp_path_factory.mktemp("state"), threads=None, device="cpu")


@pytest.fixture(scope="module")
def images(shared_train) -> dict[str, list[Path]]:
    """Real ISIC images: 6 melanomas and 6 nevi."""
    return {c: sorted((shared_train / c).glob("*.jpg"))[:6] for c in ("melanoma", "nevus")}


def make_app(loaded, tmp_path, **overrides):
    settings = Settings(model=REPO_MODEL, backend="torch", db=f"sqlite:///{tmp_path / 'audit.sqlite'}",
                        state_dir=tmp_path / "state", **overrides)
    return create_app(settings, loaded)


def upload(paths, name=None):
    return [("files", (name or p.name, p.read_bytes(), "image/jpeg")) for p in paths]


def png_bytes(size=(64, 64), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_predict_returns_a_recorded_result_per_image(loaded, images, tmp_path):
    with TestClient(make_app(loaded, tmp_path)) as client:
        files = upload(images["melanoma"][:2] + images["nevus"][:1])
        response = client.post("/v1/predict", files=files, data={"case_ref": "C-1", "patient_ref": "P-9"})
        assert response.status_code == 200, response.text
        body = response.json()
        results = body["results"]
        assert [r["filename"] for r in results] == [f[1][0] for f in files]
        assert body["model"]["backend"] == "torch" and body["disclaimer"].startswith("decision support")
        classes = loaded.meta["class_names"]
        for r in results:
            assert set(r["probabilities"]) == set(classes)
            assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
            assert r["prediction"] == max(r["probabilities"], key=r["probabilities"].get)
            assert r["melanoma_probability"] == pytest.approx(r["probabilities"]["melanoma"])
            assert r["melanoma_alert"] == (r["melanoma_probability"] >= loaded.alert_threshold)
            assert isinstance(r["refer"], bool) and isinstance(r["refer_reason"], str)
            assert r["model"]["name"] == "default" and r["model"]["sha256"] == loaded.sha256
            assert r["case_ref"] == "C-1" and r["image_kept"] is False
        # the same predictions as the library's Predictor on the same file
        direct = loaded.predictor.predict([Image.open(images["melanoma"][0])])[0]
        assert results[0]["melanoma_probability"] == pytest.approx(direct.melanoma_probability, abs=1e-5)
        audit = client.get("/v1/audit").json()
        assert audit["total"] == 3
        assert {r["record_id"] for r in audit["records"]} == {r["record_id"] for r in results}
        import hashlib
        assert results[0]["image_sha256"] == hashlib.sha256(images["melanoma"][0].read_bytes()).hexdigest()


def test_an_image_with_less_detail_than_training_is_answered_with_a_recorded_warning(loaded, images, tmp_path):
    """The shipped model trained at a 150 px shorter side: a real image reduced to 100 px is still predicted
    (not refused, not referred for it), with a `warning` that the audit record keeps; the 180 px original has none."""
    assert loaded.meta["preprocessing"]["detail_size"] == 150
    buf = io.BytesIO()
    Image.open(images["nevus"][0]).convert("RGB").resize((100, 100), Image.BICUBIC).save(buf, format="PNG")
    with TestClient(make_app(loaded, tmp_path)) as client:
        files = upload(images["nevus"][:1]) + [("files", ("small.png", buf.getvalue(), "image/png"))]
        sharp, small = client.post("/v1/predict", files=files).json()["results"]
        assert sharp["warning"] == ""
        assert small["warning"].startswith("less detail than the training images: shorter side 100 px")
        assert "less detail" not in small["refer_reason"]
        assert client.get(f"/v1/cases/{small['record_id']}").json()["warning"] == small["warning"]


def heic_bytes(path: Path) -> bytes:
    """A real image re-saved as HEIC (what an iPhone-based dermoscope uploads)."""
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, format="HEIF", quality=95)
    return buf.getvalue()


def test_a_heic_photo_is_predicted_from_its_pixels_and_kept_as_sent(loaded, images, tmp_path):
    """HEIC is accepted by its signature, predicted exactly as the library predicts the decoded file, and kept
    byte for byte under a .heic name, served back as image/heic."""
    data = heic_bytes(images["melanoma"][0])
    (tmp_path / "lesion.heic").write_bytes(data)
    keep = tmp_path / "kept"
    with TestClient(make_app(loaded, tmp_path, keep_images=keep)) as client:
        r = client.post("/v1/predict", files=[("files", ("IMG_0001.HEIC", data, "image/heic"))]).json()["results"][0]
        direct = loaded.predictor.predict([load_image(tmp_path / "lesion.heic")])[0]
        assert r["melanoma_probability"] == pytest.approx(direct.melanoma_probability, abs=1e-5)
        assert [p.name for p in keep.iterdir()] == [r["image_sha256"] + ".heic"]
        image = client.get(f"/v1/cases/{r['record_id']}/image")
        assert image.headers["content-type"] == "image/heic" and image.content == data


def _truncated_jpeg(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 3]


HOSTILE = {
    # name: (files builder, expected status, words the reason must contain)
    "too large": (lambda im: [("files", ("big.png", png_bytes((600, 600)), "image/png"))], 413, "upload limit"),
    "text file": (lambda im: [("files", ("notes.txt", b"hello, not an image", "text/plain"))], 415, "not an image"),
    "html disguised as jpg": (lambda im: [("files", ("x.jpg", b"<html><script>alert(1)</script></html>",
                                                     "image/jpeg"))], 415, "not an image"),
    "pickle": (lambda im: [("files", ("m.pkl", b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00]\x94.", "image/png"))],
               415, "not an image"),
    "truncated jpeg": (lambda im: [("files", ("cut.jpg", _truncated_jpeg(im), "image/jpeg"))], 422, "truncated"),
    "garbage after jpeg magic": (lambda im: [("files", ("g.jpg", b"\xff\xd8\xff" + os.urandom(3000),
                                                        "image/jpeg"))], 422, "corrupt"),
    "truncated heic": (lambda im: [("files", ("cut.heic", heic_bytes(im)[:400], "image/heic"))], 422, "HEIF image"),
    "empty file": (lambda im: [("files", ("e.jpg", b"", "image/jpeg"))], 422, "empty"),
    "too many files": (lambda im: upload([im] * 5), 413, "limit is 4"),
    "second file bad": (lambda im: upload([im]) + [("files", ("b.txt", b"nope", "text/plain"))], 415, "file 2"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_input_gets_status_and_json_reason_then_server_is_healthy(case, loaded, images, tmp_path):
    build, status, words = HOSTILE[case]
    app = make_app(loaded, tmp_path, max_upload_bytes=200_000, max_files=4)
    with TestClient(app) as client:
        response = client.post("/v1/predict", files=build(images["nevus"][0]))
        assert response.status_code == status, response.text
        detail = response.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail and words in detail
        assert client.get("/v1/audit").json()["total"] == 0          # nothing recorded for a refused request
        assert client.get("/healthz").json()["status"] == "ok"
        assert client.post("/v1/predict", files=upload(images["nevus"][:1])).status_code == 200


def test_request_body_over_the_limit_is_refused_before_parsing(loaded, tmp_path):
    app = make_app(loaded, tmp_path, max_upload_bytes=10_000, max_files=2)
    with TestClient(app) as client:
        response = client.post("/v1/predict", content=b"x" * 2_000_000,
                               headers={"content-type": "multipart/form-data; boundary=zzz"})
        assert response.status_code == 413
        assert "request body is over the limit" in response.json()["detail"]
        assert client.get("/healthz").status_code == 200


def test_client_file_names_are_never_paths(loaded, images, tmp_path):
    keep = tmp_path / "kept"
    with TestClient(make_app(loaded, tmp_path, keep_images=keep)) as client:
        hostile_name = "../../" + "../" * 5 + "tmp/evil.jpg"
        r = client.post("/v1/predict", files=upload(images["nevus"][:1], name=hostile_name)).json()["results"][0]
        assert r["filename"] == "evil.jpg" and r["image_kept"]
        assert [p.name for p in keep.iterdir()] == [r["image_sha256"] + ".jpg"]
        assert not (tmp_path / "evil.jpg").exists() and not Path("/tmp/evil.jpg").exists()
        image = client.get(f"/v1/cases/{r['record_id']}/image")
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
        assert image.content == images["nevus"][0].read_bytes()


def test_images_are_not_kept_without_keep_images(loaded, images, tmp_path):
    with TestClient(make_app(loaded, tmp_path)) as client:
        r = client.post("/v1/predict", files=upload(images["nevus"][:1])).json()["results"][0]
        response = client.get(f"/v1/cases/{r['record_id']}/image")
        assert response.status_code == 404 and "--keep-images" in response.json()["detail"]


def test_token_required_on_v1_when_configured(loaded, images, tmp_path):
    token = "s3cret-token-0123456789"
    with TestClient(make_app(loaded, tmp_path, token=token)) as client:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": token}):
            response = client.post("/v1/predict", files=upload(images["nevus"][:1]), headers=headers)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
            assert "bearer token" in response.json()["detail"]
            assert client.get("/v1/audit", headers=headers).status_code == 401
        good = {"Authorization": f"Bearer {token}"}
        assert client.post("/v1/predict", files=upload(images["nevus"][:1]), headers=good).status_code == 200
        assert client.get("/v1/audit", headers=good).json()["total"] == 1
        # health and the UI shell stay open (the UI asks for the token)
        assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200
    with TestClient(make_app(loaded, tmp_path / "open")) as client:  # no token configured: open
        assert client.get("/v1/audit").status_code == 200


def test_review_is_stored_and_the_worklist_puts_alerts_first(loaded, images, tmp_path):
    with TestClient(make_app(loaded, tmp_path)) as client:
        results = client.post("/v1/predict", files=upload(images["melanoma"][:4] + images["nevus"][:4]),
                              data={"case_ref": "WL-7"}).json()["results"]
        first = results[0]["record_id"]
        bad = client.post(f"/v1/cases/{first}/review", json={"decision": "agree", "final_diagnosis": "cancer?"})
        assert bad.status_code == 422 and "not one of the model's classes" in bad.json()["detail"]
        assert client.post(f"/v1/cases/{first}/review", json={"decision": "maybe"}).status_code == 422
        assert client.post("/v1/cases/999999/review", json={"decision": "agree"}).status_code == 404
        ok = client.post(f"/v1/cases/{first}/review",
                         json={"decision": "disagree", "final_diagnosis": "melanoma", "reviewer": "Dr A"})
        assert ok.status_code == 200 and ok.json()["review"]["final_diagnosis"] == "melanoma"
        client.post(f"/v1/cases/{first}/review", json={"decision": "agree", "final_diagnosis": "other"})
        case = client.get(f"/v1/cases/{first}").json()
        assert [r["decision"] for r in case["reviews"]] == ["disagree", "agree"]   # history kept
        assert case["review"]["final_diagnosis"] == "other"                        # newest shown
        todo = client.get("/v1/audit", params={"order": "priority", "reviewed": "false"}).json()["records"]
        assert first not in [r["record_id"] for r in todo] and len(todo) == 7
        keys = [(not r["melanoma_alert"], -r["melanoma_probability"]) for r in todo]
        assert keys == sorted(keys)
        assert client.get("/v1/audit", params={"reviewed": "true"}).json()["total"] == 1
        alerts = client.get("/v1/audit", params={"alert": "true"}).json()["records"]
        assert alerts and all(r["melanoma_alert"] for r in alerts)
        assert client.get("/v1/audit", params={"case": "WL"}).json()["total"] == 8
        assert client.get("/v1/audit", params={"case": "nope"}).json()["total"] == 0
        assert client.get("/v1/audit", params={"since": "2999-01-01T00:00:00Z"}).json()["total"] == 0
        assert client.get("/v1/audit", params={"limit": 2}).json()["records"].__len__() == 2
        assert client.get("/v1/audit", params={"limit": 0}).status_code == 422


def test_audit_trail_survives_a_restart(loaded, images, tmp_path):
    with TestClient(make_app(loaded, tmp_path)) as client:
        ids = [r["record_id"] for r in
               client.post("/v1/predict", files=upload(images["nevus"][:3])).json()["results"]]
        client.post(f"/v1/cases/{ids[0]}/review", json={"decision": "agree", "final_diagnosis": "nevus"})
    with TestClient(make_app(loaded, tmp_path)) as client:  # a new app on the same SQLite file
        audit = client.get("/v1/audit").json()
        assert sorted(r["record_id"] for r in audit["records"]) == sorted(ids)
        assert client.get(f"/v1/cases/{ids[0]}").json()["review"]["final_diagnosis"] == "nevus"
        assert client.get("/healthz").json()["schema_revision"] == "0002"


class _Receiver(BaseHTTPRequestHandler):
    """A tiny webhook receiver: refuses the first POST (500) to exercise the retry, accepts the rest."""

    received: list = []
    calls = 0

    def do_POST(self):  # noqa: N802 - http.server's name
        type(self).calls += 1
        body = self.rfile.read(int(self.headers["content-length"]))
        if type(self).calls == 1:
            self.send_response(500)
        else:
            type(self).received.append(json.loads(body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_melanoma_alert_reaches_a_local_webhook(loaded, images, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/alerts"
    try:
        app = make_app(loaded, tmp_path, alert_webhook=url, public_url="https://clinic.example")
        with TestClient(app) as client:
            results = client.post("/v1/predict", files=upload(images["melanoma"][:4]), data={"patient_ref": "P-1"}
                                  ).json()["results"]
            alerts = [r for r in results if r["melanoma_alert"]]
            assert alerts, "expected at least one melanoma alert among 4 melanomas"
            deadline = time.monotonic() + 20
            while len(_Receiver.received) < len(alerts) and time.monotonic() < deadline:
                time.sleep(0.1)
            stats = client.get("/healthz").json()["alerts"]
        got = {a["record_id"]: a for a in _Receiver.received}
        assert set(got) == {r["record_id"] for r in alerts}
        first = got[alerts[0]["record_id"]]
        assert first["melanoma_probability"] == pytest.approx(alerts[0]["melanoma_probability"])
        assert first["case_url"] == f"https://clinic.example/#/case/{alerts[0]['record_id']}"
        assert first["model"]["sha256"] == loaded.sha256
        assert "P-1" not in json.dumps(_Receiver.received)       # no patient data leaves in alerts
        assert _Receiver.calls == len(alerts) + 1 and stats["sent"] == len(alerts)
    finally:
        server.shutdown()


def test_webhook_never_blocks_predictions(loaded, images, tmp_path):
    """An unreachable webhook: predictions still answer at once; alerts beyond the queue are dropped."""
    app = make_app(loaded, tmp_path, alert_webhook="http://127.0.0.1:9/nothing-listens", webhook_queue=1,
                   webhook_retries=3)
    with TestClient(app) as client:
        start = time.monotonic()
        for _ in range(3):
            assert client.post("/v1/predict", files=upload(images["melanoma"][:4])).status_code == 200
        assert time.monotonic() - start < 30
        assert client.get("/healthz").json()["alerts"]["dropped"] >= 1


def test_explain_returns_a_gradcam_png(loaded, images, tmp_path):
    with TestClient(make_app(loaded, tmp_path)) as client:
        response = client.post("/v1/explain", files={"file": ("m.jpg", images["melanoma"][0].read_bytes())})
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        overlay = Image.open(io.BytesIO(response.content))
        assert overlay.size == (320, 320)
        assert client.post("/v1/explain", files={"file": ("x.txt", b"text")}).status_code == 415


def test_model_card_openapi_and_health(loaded, tmp_path):
    with TestClient(make_app(loaded, tmp_path)) as client:
        card = client.get("/v1/model").json()
        assert card["class_names"] == loaded.meta["class_names"] and card["model_json"]["format"] == "melanoma-model"
        assert card["tta_views"] == loaded.predictor.tta_views == (loaded.meta.get("test_time_augmentation") or {}).get(
            "views", 1)  # what model.json says: 8 for the shipped default since session 37
        assert card["alert_threshold"] == pytest.approx(loaded.alert_threshold)
        paths = client.get("/openapi.json").json()["paths"]
        for path in ("/v1/predict", "/v1/explain", "/v1/model", "/v1/audit", "/v1/cases/{record_id}/review",
                     "/v1/calibration", "/healthz"):
            assert path in paths
        health = client.get("/healthz").json()
        assert health["status"] == "ok" and health["database"] == "ok"


def test_api_docs_pages_load_their_scripts_from_the_service(loaded, tmp_path):
    """Swagger UI and ReDoc work on a clinic network without internet access: no CDN address in the pages."""
    import re

    with TestClient(make_app(loaded, tmp_path)) as client:
        for page in ("/docs", "/redoc"):
            html = client.get(page)
            assert html.status_code == 200 and "melanoma clinic service" in html.text
            assets = re.findall(r'(?:src|href)="([^"]+)"', html.text)
            assert assets and all(a.startswith("/") for a in assets), assets  # no https://cdn... address
            for asset in assets:
                assert client.get(asset).status_code == 200, asset


def test_ui_is_served_with_no_external_asset(loaded, tmp_path):
    with TestClient(make_app(loaded, tmp_path)) as client:
        page = client.get("/")
        assert page.status_code == 200 and "Decision support, not a diagnosis" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for name in ("app.js", "style.css"):
            assert client.get(f"/{name}").status_code == 200
    for file in STATIC.iterdir():
        text = file.read_text()
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", text), f"{file.name} loads an external asset"
        assert "@import" not in text and "cdn" not in text.lower()


@pytest.mark.slow
def test_site_calibration_proposes_and_applies_to_a_copy_only(loaded, images, tmp_path):
    with TestClient(make_app(loaded, tmp_path)) as client:
        assert client.get("/v1/calibration").json()["proposed"] is None  # no reviewed case yet
        results = client.post("/v1/predict", files=upload(images["melanoma"] + images["nevus"])).json()["results"]
        truth = ["melanoma"] * 6 + ["nevus"] * 6
        for r, diagnosis in zip(results, truth):
            client.post(f"/v1/cases/{r['record_id']}/review", json={"decision": "agree", "final_diagnosis": diagnosis})
        status = client.get("/v1/calibration", params={"target_sensitivity": 0.9}).json()
        assert status["reviewed_cases"] == 12 and status["current"]["n_melanoma"] == 6
        p_mel = [r["melanoma_probability"] for r in results]
        expected_sens = np.mean([p >= loaded.alert_threshold for p in p_mel[:6]])
        assert status["current"]["sensitivity"] == pytest.approx(expected_sens)
        proposed = status["proposed"]
        assert proposed is not None and proposed["sensitivity"] >= 0.9
        assert proposed["warnings"], "fewer than 30 melanomas: rethreshold warns, and the page shows it"
        before = (REPO_MODEL / "model.json").read_bytes()
        assert client.post("/v1/calibration/apply", json={"target_sensitivity": 0.9}).status_code == 400
        applied = client.post("/v1/calibration/apply", json={"target_sensitivity": 0.9, "confirm": True})
        assert applied.status_code == 200, applied.text
        folder = Path(applied.json()["model_folder"])
        assert folder.parent == tmp_path / "state" / "models"
        meta = json.loads((folder / "model.json").read_text())
        assert meta["thresholds"]["melanoma_alert"] == pytest.approx(proposed["threshold"])
        assert (folder / "model.safetensors").is_file() and (folder / "site_predictions.csv").is_file()
        assert (REPO_MODEL / "model.json").read_bytes() == before        # the served model is untouched
        assert client.get("/v1/model").json()["alert_threshold"] == pytest.approx(loaded.alert_threshold)


def test_site_monitor_reads_the_served_models_recent_records_only(loaded, images, tmp_path):
    """GET /v1/monitor: real predictions count; records of other weights or of another alert threshold (a
    site-calibrated copy) do not; `last` keeps the newest; below 50 images it says so."""
    from melanoma.serve.db import PredictionRecord

    with TestClient(make_app(loaded, tmp_path)) as client:
        client.post("/v1/predict", files=upload(images["melanoma"][:2] + images["nevus"][:2]))
        report = client.get("/v1/monitor").json()
        assert report["status"] == "too few" and report["images"] == 4
        assert report["model"]["alert_threshold"] == pytest.approx(loaded.alert_threshold)

        def record(alert, sha=loaded.sha256, threshold=loaded.alert_threshold):
            return PredictionRecord(image_sha256="0" * 64, model_name="m", model_version="v", model_sha256=sha,
                                    backend="onnx", probabilities={}, prediction="nevus", confidence=0.9,
                                    melanoma_probability=0.5 if alert else 0.01, alert_threshold=threshold,
                                    alert=alert, refer=False)
        with client.app.state.sessions() as session:
            session.add_all([record(True, sha="f" * 64) for _ in range(100)]  # other weights: not counted
                            + [record(True, threshold=0.5) for _ in range(100)]  # another threshold: not counted
                            + [record(i % 10 < 7) for i in range(200)])  # 70% alerted
            session.commit()
        report = client.get("/v1/monitor", params={"last": 150}).json()
        assert report["images"] == 150 and report["last"] == 150
        assert report["status"] == "check" and report["alerted"]["share"] == pytest.approx(105 / 150)
        assert set(report["alerted"]["implied_prevalence"]) == set(report["operating_points"])
        assert client.get("/v1/monitor", params={"max_prevalence": 0}).status_code == 422
        proposed = report["proposed"]  # 105 of the 150 at p = 0.5, 45 at 0.01: a threshold between alerts ~36%
        assert proposed["prevalence"] == 0.1 and 0.01 < proposed["threshold"] <= 0.5
        assert client.post("/v1/monitor/apply", json={"last": 150}).status_code == 400  # no confirm
        before = (REPO_MODEL / "model.json").read_bytes()
        applied = client.post("/v1/monitor/apply", json={"last": 150, "prevalence": 0.1, "confirm": True})
        assert applied.status_code == 200, applied.text
        folder = Path(applied.json()["model_folder"])
        assert folder.parent == tmp_path / "state" / "models" and (folder / "site_alert_share.csv").is_file()
        adapted = json.loads((folder / "model.json").read_text())["thresholds"]
        assert adapted["melanoma_alert"] == pytest.approx(proposed["threshold"])
        assert adapted["site_adaptation"]["n_images"] == 150
        assert (REPO_MODEL / "model.json").read_bytes() == before  # the served model is untouched
    with TestClient(make_app(loaded, tmp_path, site_prevalence=0.02)) as client:  # a screening site: its default
        assert client.get("/v1/monitor", params={"last": 150}).json()["proposed"]["prevalence"] == 0.02
        applied = client.post("/v1/monitor/apply", json={"last": 150, "confirm": True}).json()
        assert applied["prevalence"] == 0.02


def test_non_loopback_without_token_warns(tmp_path, monkeypatch, capsys):
    from melanoma import cli
    from melanoma.errors import ConfigError
    from melanoma.serve import app as app_module

    def stop(settings, loaded=None):
        raise ConfigError("stopped before serving (test)")

    monkeypatch.setattr(app_module, "create_app", stop)
    db = f"sqlite:///{tmp_path / 'a.sqlite'}"
    assert cli.main(["serve", "--host", "0.0.0.0", "--db", db]) == 2
    assert "warning: serving on 0.0.0.0 without --token-file" in capsys.readouterr().err
    token = tmp_path / "token"
    token.write_text("0123456789abcdef-token\n")
    assert cli.main(["serve", "--host", "0.0.0.0", "--token-file", str(token), "--db", db]) == 2
    assert "warning" not in capsys.readouterr().err
    assert cli.main(["serve", "--db", db]) == 2  # 127.0.0.1 by default: no warning
    assert "warning" not in capsys.readouterr().err
    assert Settings(host="::1").is_loopback() and Settings(host="localhost").is_loopback()
    assert not Settings(host="192.168.1.5").is_loopback()
