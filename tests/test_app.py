"""The Gradio app served in-process, driven through gradio_client (and headless Chromium, if installed).

The app runs on the bundled model when assets/base-model exists, else on the tiny pipeline, with few
learning steps; every check reads what a user would see (timeline captions, images, error messages).
"""

from __future__ import annotations

import html
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from lifelong.base import REPO_ROOT, default_model, get_base
from lifelong.methods import DEFAULT_METHOD
from lifelong.service import Studio, default_scorer
from lifelong.ui.learn_tab import examples

sys.path.insert(0, str(REPO_ROOT))
from app import create_app  # noqa: E402

STEPS = 6  # enough to store a concept; the tests check the plumbing, not the quality


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def base(request):
    """The app's default model (bundled, or $LIFELONG_BASE_MODEL) when installed, else the tiny pipeline."""
    if Path(default_model()).exists():
        return get_base()
    return request.getfixturevalue("tiny_base")


@pytest.fixture(scope="module")
def served(base, tmp_path_factory):
    scorer, why = default_scorer()  # the identity encoder when it is installed, as the app runs
    studio = Studio(base, root=tmp_path_factory.mktemp("sessions"), scorer=scorer, scorer_note=why)
    demo = create_app(studio)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
    yield url, studio
    demo.close()


def call(client: Client, api: str, **by_label):
    """Call an endpoint, giving inputs by their UI label; the rest keep the defaults the UI shows."""
    endpoint = client.view_api(return_format="dict", print_info=False)["named_endpoints"][api]
    args = [by_label.get(p["label"], p.get("parameter_default")) for p in endpoint["parameters"]]
    return client.predict(*args, api_name=api)


def learn(client: Client, images: list[str], name: str, class_word: str = "", steps: int = STEPS, **extra):
    return call(
        client,
        "/learn",
        **{
            "3–5 images of your concept (drop them here)": [{"image": handle_file(p)} for p in images],
            "Concept name": name,
            "Class word": class_word,
            "Steps": steps,
            "Batch size": 2,
            **extra,
        },
    )


def generate(client: Client, prompt: str, num_images: int = 2, steps: int = 4) -> np.ndarray:
    out, _ = call(client, "/generate", Prompt=prompt, Steps=steps, **{"Num images": num_images, "Seed": 3})
    return np.stack([np.asarray(Image.open(item["image"]).convert("RGB")) for item in out])


def captions(timeline) -> list[str]:
    return [item["caption"] for item in timeline or []]


def test_learn_example_generate_export_reimport(served, base, tmp_path):
    url, studio = served
    example = examples()[0]
    client = Client(url, verbose=False)
    timeline, _, status = learn(
        client, example.images, example.name, example.class_word, **{"Captions (optional)": example.captions}
    )
    assert captions(timeline) == [
        f"1. <{example.name}> · {DEFAULT_METHOD} · {captions(timeline)[0].split(' · ')[-1]}"
    ]
    assert f"Learned **<{example.name}>**" in html.unescape(status)  # escaped: Markdown renders HTML
    images = generate(client, f"a <{example.name}> {example.class_word}")
    assert images.shape == (2, base.resolution, base.resolution, 3)
    assert images.std() > 1.0 and not np.array_equal(images[0], images[1])  # seeds 3 and 4 differ

    _, maps = call(
        client, "/generate", Prompt=f"a <{example.name}>", Steps=2, **{"Show attention maps": True}
    )
    assert maps["visible"] is True  # an update: the maps gallery appears only when asked for
    assert [item["caption"] for item in maps["value"]] == [f"image 1: <{example.name}>"]

    exported = Path(call(client, "/export"))
    assert exported.suffix == ".zip" and exported.stat().st_size > 0
    kept = shutil.copy(exported, tmp_path / "kept.zip")
    timeline, _, _ = call(client, "/reset")
    assert captions(timeline) == []
    with pytest.raises(AppError, match="not a learned concept"):
        generate(client, f"a <{example.name}>")
    timeline, _, _ = call(client, "/import", **{"Import session file": handle_file(kept)})
    assert len(captions(timeline)) == 1 and f"<{example.name}>" in captions(timeline)[0]
    assert np.array_equal(generate(client, f"a <{example.name}> {example.class_word}"), images)

    later = examples()[1]
    learn(client, later.images, later.name, later.class_word, steps=2)
    pairs, matrix, curves, words, note = call(client, "/forgetting", Steps=2, **{"Images per concept": 3})
    assert [item["caption"].split(" · ")[0] for item in pairs] == [
        f"<{example.name}> right after learning it (checkpoint 1)",
        f"<{example.name}> now (checkpoint 2)",
    ]
    first_now = np.asarray(Image.open(pairs[0]["image"]).convert("RGB"))
    assert first_now.shape == (base.resolution, base.resolution, 3)
    if studio.scorer is None:
        assert matrix is None and curves is None and "No IA numbers" in note
    else:
        assert Image.open(matrix).size[0] > 100 and Image.open(curves).size[0] > 100
        word = pairs[1]["caption"].split(" · ")[-1]  # "<octopus> now (checkpoint 2) · IA 0.4 [..] · kept"
        assert word in ("kept", "faded", "forgotten", "not learned") and f"**{word}**" in words
        assert "over the 3 seed(s)" in note


def test_the_http_api_names_parameters_like_the_ui_and_moves_loras_out_and_in(served, base, tmp_path):
    """README's gradio_client example (learn, generate by parameter name), then a LoRA export through
    the app imported into another visitor's session."""
    url, _ = served
    client = Client(url, verbose=False)
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    names = [p["parameter_name"] for endpoint in endpoints.values() for p in endpoint["parameters"]]
    assert not [name for name in names if name.startswith("param_")]
    assert [p["parameter_name"] for p in endpoints["/generate"]["parameters"]][:3] == [
        "prompt", "show_maps", "steps",
    ]  # fmt: skip
    example = examples()[0]
    files = [handle_file(path) for path in example.images]
    client.predict(
        images=[{"image": file} for file in files], name="rex", class_word=example.class_word,
        method="finetune", params="lora", steps=STEPS, batch_size=2, api_name="/learn",
    )  # fmt: skip
    images, _ = client.predict(prompt=f"a <rex> {example.class_word}", steps=4, seed=5, api_name="/generate")
    ours = np.asarray(Image.open(images[0]["image"]))
    archive, report = client.predict(format="kohya", concept="rex", api_name="/export_lora")
    assert "<rex>: LoRA on" in html.unescape(report)
    shutil.unpack_archive(archive, tmp_path)
    [folder] = tmp_path.glob("lifelong-rex-kohya-*")
    other = Client(url, verbose=False)
    lora, embedding = (
        handle_file(folder / "rex.safetensors"),
        handle_file(folder / "embeddings" / "rex.safetensors"),
    )
    timeline, _, status = other.predict(lora, embedding, "rex", example.class_word, api_name="/import_lora")
    assert captions(timeline)[0].startswith("1. <rex> · imported") and "kohya LoRA" in status
    again, _ = other.predict(prompt=f"a <rex> {example.class_word}", steps=4, seed=5, api_name="/generate")
    assert np.array_equal(np.asarray(Image.open(again[0]["image"])), ours)


def test_two_sessions_see_only_their_own_concepts(served):
    url, _ = served
    first, second = Client(url, verbose=False), Client(url, verbose=False)
    pool = examples()
    # both learn at the same time; the queue runs them one after the other, each in its own session
    futures = []
    for client, example in ((first, pool[1]), (second, pool[2])):
        endpoint = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/learn"]
        values = {
            "3–5 images of your concept (drop them here)": [
                {"image": handle_file(p)} for p in example.images
            ],
            "Concept name": example.name,
            "Class word": example.class_word,
            "Steps": STEPS,
            "Batch size": 2,
        }
        args = [values.get(p["label"], p.get("parameter_default")) for p in endpoint["parameters"]]
        futures.append(client.submit(*args, api_name="/learn"))
    results = [future.result(timeout=600) for future in futures]
    for (timeline, _, _), example in zip(results, (pool[1], pool[2]), strict=True):
        assert [caption.split(" · ")[0] for caption in captions(timeline)] == [f"1. <{example.name}>"]
    for client, example, other in ((first, pool[1], pool[2]), (second, pool[2], pool[1])):
        timeline, chips, _ = call(client, "/session")
        assert [c.split(" · ")[0] for c in captions(timeline)] == [f"1. <{example.name}>"]
        with pytest.raises(AppError, match="not a learned concept"):
            generate(client, f"a <{other.name}>", num_images=1, steps=1)


def test_cancel_stops_learning_and_keeps_what_was_learned(served):
    url, _ = served
    client = Client(url, verbose=False)
    good = examples()[2].images
    learn(client, good, "first", steps=2)
    endpoint = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/learn"]
    values = {
        "3–5 images of your concept (drop them here)": [{"image": handle_file(p)} for p in good],
        "Concept name": "second",
        "Steps": 2000,
    }
    job = client.submit(
        *[values.get(p["label"], p.get("parameter_default")) for p in endpoint["parameters"]],
        api_name="/learn",
    )
    deadline = time.time() + 120
    while not (job.status().progress_data or []) and time.time() < deadline:
        time.sleep(0.2)  # wait until training steps are being reported
    assert "step" in (job.status().progress_data[0].desc or "")
    client.predict(api_name="/cancel")
    timeline, _, status = job.result(timeout=120)
    assert html.unescape(status).startswith("Cancelled: learning <second> was cancelled at step")
    assert [c.split(" · ")[0] for c in captions(timeline)] == ["1. <first>"]


def test_bad_learn_input_says_what_to_do_and_keeps_the_session(served, tmp_path):
    url, _ = served
    client = Client(url, verbose=False)
    good = examples()[3].images
    learn(client, good[:3], "keeper", "thing", steps=2)
    (tmp_path / "notes.png").write_text("this is a text file")
    cases = [
        ([*good[:2], str(tmp_path / "notes.png")], "newone", "notes.png: this is not a readable image"),
        ([good[i % len(good)] for i in range(50)], "newone", "50 images is too many"),
        (good, "../etc", "cannot be a concept name"),
        (good, "rex🦖", "cannot be a concept name"),
        ([], "newone", "Add 3–5 images"),
        (good, "keeper", "already in this session"),
    ]
    for images, name, message in cases:
        with pytest.raises(AppError, match=re.escape(message)):
            learn(client, images, name, steps=2)
    with pytest.raises(
        AppError, match=re.escape(f"2 captions for {len(good)} images: give one per image, or none")
    ):
        learn(client, good, "newone", steps=2, **{"Captions (optional)": "on grass\nat night"})
    timeline, _, _ = call(client, "/session")
    assert [c.split(" · ")[0] for c in captions(timeline)] == ["1. <keeper>"]


def test_odd_images_are_converted_and_an_empty_prompt_is_refused(served, tmp_path):
    url, _ = served
    client = Client(url, verbose=False)
    source = Image.open(examples()[0].images[0]).convert("RGB")
    cmyk = tmp_path / "cmyk.jpg"
    source.convert("CMYK").save(cmyk)
    alpha = tmp_path / "alpha.png"
    source.convert("RGBA").save(alpha)
    animated = tmp_path / "animated.gif"
    source.save(animated, save_all=True, append_images=[source.rotate(90)], duration=100)
    huge = tmp_path / "huge.png"
    source.resize((12000, 300)).save(huge)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.asarray(source.convert("L"), dtype=np.uint16) * 257).save(deep)
    timeline, _, _ = learn(client, [str(p) for p in (cmyk, alpha, animated, huge, deep)], "odd", steps=2)
    assert [c.split(" · ")[0] for c in captions(timeline)] == ["1. <odd>"]
    with pytest.raises(AppError, match="Write a prompt"):
        generate(client, "   ")


BROWSER = Path("/usr/bin/chromium")


@pytest.mark.browser
@pytest.mark.skipif(
    not BROWSER.exists(), reason="needs Debian's chromium: apt-get install chromium chromium-driver"
)
def test_browser_upload_learn_generate_screenshot(served, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, studio = served
    fake = tmp_path / "notes.png"
    fake.write_text("a text file with an image's name")
    options = webdriver.ChromeOptions()
    options.binary_location = str(BROWSER)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1100"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    wait = WebDriverWait(driver, 300)
    try:
        driver.get(url)
        upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]")))
        upload.send_keys("\n".join([str(fake), *examples()[0].images[:3]]))
        # the upload is checked at once: a toast names the bad file and says what to do
        wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "body"), "notes.png: this is not"))
        assert "Remove it and add another image." in driver.find_element(By.TAG_NAME, "body").text
        deletes = driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Delete image']")
        assert len(deletes) == 4
        deletes[0].click()  # remove the bad one; the three good images stay
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "button[aria-label='Delete image']")) == 3)
        driver.find_element(By.CSS_SELECTOR, "#concept-name textarea, #concept-name input").send_keys("webby")
        driver.find_element(By.XPATH, "//button[contains(., 'Advanced')]").click()
        steps = wait.until(
            ec.visibility_of_element_located((By.CSS_SELECTOR, "#learnconfig-steps input[type=number]"))
        )
        steps.clear()
        steps.send_keys("20\t")  # fewer steps than the default: the test checks the path, not the quality
        driver.find_element(By.ID, "learn-button").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "Learned <webby>"))
        example = examples()[1].name  # one click on an example fills the form and learns it
        driver.find_element(By.XPATH, f"//tr[.//*[contains(text(), '{example}')]]").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), f"Learned <{example}>"))
        status = " ".join(driver.find_element(By.ID, "status").text.split())  # code spans break lines
        assert f"holds 2 concept(s): <webby> , <{example}>" in status
        driver.find_element(By.XPATH, "//button[@role='tab'][contains(., 'Generate')]").click()
        wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#prompt textarea"))).send_keys(
            "a <webby>"
        )
        driver.find_element(By.ID, "generate-button").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#generated img")))
        time.sleep(1)
        shot = Path(os.environ.get("LIFELONG_SCREENSHOT") or tmp_path / "app.png")
        driver.save_screenshot(str(shot))
        [workspace] = [f for f in studio.root.iterdir() if "<webby>" in studio.tokens(f.name)]
        # Reset asks first, naming what it would delete; "Keep them" keeps them
        driver.find_element(By.XPATH, "//button[@role='tab'][contains(., 'Session')]").click()
        wait.until(ec.element_to_be_clickable((By.XPATH, "//button[contains(., 'Reset')]"))).click()
        wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "body"), "Delete all 2 concept(s)"))
        driver.find_element(By.XPATH, "//button[contains(., 'Keep them')]").click()
        wait.until(ec.invisibility_of_element_located((By.ID, "confirm-reset")))
        assert studio.tokens(workspace.name) == ["<webby>", f"<{example}>"]
        driver.find_element(By.XPATH, "//button[contains(., 'Reset')]").click()
        wait.until(ec.element_to_be_clickable((By.ID, "confirm-reset"))).click()
        wait.until(lambda _: studio.tokens(workspace.name) == [])
        driver.find_element(By.XPATH, "//button[@role='tab'][contains(., 'Learn')]").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "No concepts yet"))
        driver.get("about:blank")  # leaving the page ends the Gradio session: its workspace is deleted
        deadline = time.time() + 30
        while workspace.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert not workspace.exists()
    finally:
        driver.quit()
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3)[::97], axis=0)) > 50


def test_a_prompt_naming_two_learned_concepts_draws_them_side_by_side(served):
    url, _ = served
    client = Client(url, verbose=False)
    first, second = examples()[:2]
    for example in (first, second):  # the app's default method: routed, so side by side applies
        learn(client, list(example.images), example.name, example.class_word)
    pair = f"a <{first.name}> {first.class_word} and a <{second.name}> {second.class_word}"
    both = generate(client, pair, num_images=1, steps=2)
    alone = generate(client, f"a <{first.name}> {first.class_word}", num_images=1, steps=2)
    assert both.shape[2] == 2 * both.shape[1] and alone.shape[1] == alone.shape[2]  # one square per concept
