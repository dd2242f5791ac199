-- Each request creates an embed session: one embed_initialized event.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"template_key":"contacts","event_webhook_keys":["event_webhook"],"dev_mode":false}'
