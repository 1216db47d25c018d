"""POSTs a body of the given size without a key with Python's http.client, which
writes the whole body before it reads the answer, `rounds` times on new connections;
prints one line per round: the status and the Connection header, or the error.

    python3 post_body.py 127.0.0.1 8080 /me 4194304 5
"""

import http.client
import sys

host, port, path, size, rounds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
body = b"x" * size
for _ in range(rounds):
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("POST", path, body=body, headers={"content-type": "application/octet-stream"})
        response = connection.getresponse()
        response.read()
        print(response.status, response.getheader("connection") or "-")
    except Exception as error:  # what the client saw instead of an answer
        print("ERROR", type(error).__name__)
    finally:
        connection.close()
