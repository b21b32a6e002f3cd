-- wrk script of the `upload` scenario (bench/gateway/run.sh): every request is a POST whose body
-- is UPLOAD_BYTES long (default 262144 = 256 KiB); wrk adds Content-Length. The backend
-- (drawbridge-echo) reads the body to its end and answers with its length ("body_bytes").
local size = tonumber(os.getenv("UPLOAD_BYTES") or "262144")
wrk.method = "POST"
wrk.body = string.rep("x", size)
wrk.headers["Content-Type"] = "application/octet-stream"
