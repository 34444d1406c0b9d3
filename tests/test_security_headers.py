"""Pages carry a Content-Security-Policy; API answers need none."""

from __future__ import annotations


async def test_pages_send_a_content_security_policy(client):
    for path in ("/agent", "/chat", "/ops"):
        response = await client.get(path)
        assert response.status == 200 and response.content_type == "text/html", path
        policy = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy, path
    assert "Content-Security-Policy" not in (await client.get("/healthz")).headers
