-- What a receiver's ceiling is measured with: an event-sized body
-- (OneSchema's embed_initialized), POSTed as taphook delivers it.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"uuid":"event-6f1c2a9e-4b7d-4e21-9a53-0c8d7e5f1b2a","embed_id":"abc","environment_name":"Production","event_type":"embed_initialized","trigger_type":"user","data":{"template_key":"contacts","embed_id":"abc","session":"0123456789abcdef0123456789abcdef"},"created_at":1706112805.5}'
