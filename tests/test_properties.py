"""Property-based tests: no input to a webhook parser, a socket, the rules loader or the CLI
makes a 5xx, a traceback or a half-written state; each gets a clear refusal or a normal answer."""

from __future__ import annotations

import re
import shutil
import string

from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.twilio_sms import parse
from service.__main__ import main
from service.rules.loader import load_rules
from service.rules.yamlfile import ConfigError
from service.settings import ENV_VARS, SettingsError, settings_from_env
from tests.conftest import RULES_DIR
from tests.twilio_driver import post_signed

text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
FIELDS = ["MessageSid", "From", "To", "Body", "AccountSid", "NumMedia", "FromCountry"]
forms = st.dictionaries(st.sampled_from(FIELDS) | text, text | st.text(max_size=2000),
                        max_size=8)
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@given(forms)
@settings(max_examples=300, deadline=None)
def test_the_sms_parser_returns_an_inbound_or_a_4xx(form):
    try:
        inbound = parse(form)
    except web.HTTPException as exc:
        assert 400 <= exc.status < 500
        return
    assert (inbound.address, inbound.service_address) == (form["From"], form["To"])
    assert inbound.dedupe_key == form["MessageSid"]


@given(st.dictionaries(st.sampled_from(sorted(ENV_VARS)), text, max_size=6))
@settings(max_examples=300, deadline=None)
def test_settings_are_built_or_every_problem_is_named(environ):
    try:
        settings_from_env(environ)
    except SettingsError as exc:
        assert exc.problems and all(p.split("=", 1)[0] in ENV_VARS for p in exc.problems)


@FUZZ
@given(st.sampled_from(["catalog.yaml", "routes.yaml", "flows.yaml", "experiments.yaml",
                        "away_reasons.yaml"]),
       st.integers(min_value=0, max_value=4000), text)
def test_a_garbled_rules_file_is_refused_with_its_name(tmp_path_factory, name, at, junk):
    directory = tmp_path_factory.mktemp("rules") / "r"
    shutil.copytree(RULES_DIR, directory)
    path = directory / name
    if not path.exists():
        return
    original = path.read_text()
    path.write_text(original[:at] + junk + original[at:])
    try:
        load_rules(directory, with_classifier=False)
    except ConfigError as exc:
        assert str(exc)  # a message that names the problem
    assert (RULES_DIR / name).read_text() == original  # the deployment's own files untouched


KEY_LINE = re.compile(r"^(\s*(?:- )?)([A-Za-z_][A-Za-z0-9_]*):", re.MULTILINE)


def test_every_key_of_every_rules_file_misspelt_is_refused_or_harmless(tmp_path):
    """The fuzz test above samples; this walks every key of the example deployment's files
    (a required key misspelt once crashed the load instead of naming it)."""
    directory = tmp_path / "r"
    shutil.copytree(RULES_DIR, directory)
    tried = 0
    for path in sorted(directory.glob("*.yaml")):
        original = path.read_text()
        for key in KEY_LINE.finditer(original):
            path.write_text(original[:key.start(2)] + "x" + original[key.start(2):])
            tried += 1
            try:
                load_rules(directory, with_classifier=False)
            except ConfigError as exc:
                assert str(directory) in str(exc), (path.name, key.group(2))  # names a file
        path.write_text(original)
    assert tried > 200  # every file's keys, not a few


@FUZZ
@given(argv=st.lists(st.sampled_from(["rules", "check", "test", "simulate", "report", "--from",
                                 "--to", "tokens", "add", "--role", "nobody", "x=1",
                                 "channel=sms", "2020-13-45"]) | st.text(
    alphabet=string.ascii_letters + "=-/.", max_size=12), max_size=5))
def test_the_cli_answers_bad_arguments_with_an_exit_code(capsys, argv):
    if argv[:1] in (["serve"], ["demo"]) or "serve" in argv:
        return
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusal: usage on stderr
        code = exc.code
    assert isinstance(code, int) and code in (0, 1, 2)
    assert "Traceback" not in capsys.readouterr().err


@FUZZ
@given(forms)
async def test_fuzzed_signed_sms_webhooks_never_get_a_5xx(client, form):
    form = {k: v for k, v in form.items() if k}
    response = await post_signed(client, "/twilio/sms", form)
    assert response.status < 500, await response.text()
    if response.status == 200:
        assert response.content_type == "text/xml"


@FUZZ
@given(st.lists(st.one_of(text, st.just('{"type":"message","text":""}'),
                          st.just('{"type":"message","text":5}'), st.just("[]"),
                          st.just('{"type":"start"}')), min_size=1, max_size=4))
async def test_bad_chat_frames_get_an_error_frame_and_the_socket_lives(client, frames):
    ws = await client.ws_connect("/chat/ws")
    await ws.send_json({"type": "start", "session": None})
    while (await ws.receive_json())["type"] != "status":
        pass
    for frame in frames:
        await ws.send_str(frame)
        answer = await ws.receive_json()
        assert answer["type"] in ("error", "message"), answer
        while answer["type"] == "message":  # a frame that was a valid message: its reply
            answer = await ws.receive_json()
            if answer["type"] == "status":
                break
    await ws.send_json({"type": "message", "text": "where is my order"})
    assert (await ws.receive_json())["type"] == "message"  # still served
    await ws.close()


