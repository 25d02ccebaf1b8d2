"""Import uploads received within ``limits.MAX_UPLOAD_BYTES``, and read a piece at a time.

``upload_guard`` runs before anything reads the request body (DRF's SessionAuthentication reads
a multipart body whole for its CSRF check, before the view): a declared Content-Length over the
limit is refused at once, 413 ``too_large``, unread. A body sent in chunks without one is read
only where the server joins the chunks and ends the stream (``wsgi.input_terminated``, as
gunicorn does), and then only up to the limit; elsewhere it is refused, 411. While the body is
parsed, ``UploadLimit`` (the first upload handler) counts the file's bytes and stops the upload
once they pass the limit, whatever the headers said. ``uploaded_lines`` reads the received file
line by line."""

from __future__ import annotations

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler
from django.core.handlers.wsgi import LimitedStream
from django.http import HttpRequest

from annotation import limits
from annotation.errors import LengthRequired, TooLarge
from annotation.parsing import StreamedLines, max_line_bytes


def too_large(size: int, *, what: str = "content_length") -> TooLarge:
    """``what``: content_length (the body's declared size), received (the file's bytes so far) or file_size."""
    limit = limits.MAX_UPLOAD_BYTES
    said = {"content_length": f"a body of {size} bytes", "received": f"over {size - 1} bytes received"}.get(what, f"{size} bytes")
    return TooLarge(f"The upload is too large ({said}; the limit is {limit} bytes for the file).", details={"limit_bytes": limit, what: size})


def upload_guard(request: HttpRequest) -> None:
    """Refuse an upload over the limit before its body is read, and count it while it is read.
    ``request`` is Django's (a DRF view's ``request._request``), before anything touched its body."""
    body_limit = limits.MAX_UPLOAD_BYTES + limits.MULTIPART_SLACK_BYTES
    declared = request.META.get("CONTENT_LENGTH")
    try:
        length = int(declared) if declared else None
    except ValueError:
        length = None
    if length is not None and length > body_limit:
        raise too_large(length)
    if length is None:
        if request.META.get("wsgi.input_terminated"):
            # The server ends the stream at the body's end: read it, but never past the limit.
            request._stream = LimitedStream(request.META["wsgi.input"], body_limit + 1)
            request.META["CONTENT_LENGTH"] = str(body_limit + 1)  # Django and DRF read no body without one
        elif request.META.get("HTTP_TRANSFER_ENCODING"):
            raise LengthRequired("Send the file with a Content-Length header: this server cannot tell where a body sent in chunks ends.")
    if not hasattr(request, "_files"):  # not parsed yet (else the handlers can no longer change)
        request.upload_handlers.insert(0, UploadLimit(request, limit=limits.MAX_UPLOAD_BYTES))


class UploadLimit(FileUploadHandler):
    """Counts the bytes of the request's files as they arrive; past ``limit`` it removes what
    the other handlers received and stops the upload with TooLarge (413)."""

    def __init__(self, request=None, *, limit: int):
        super().__init__(request)
        self.limit = limit
        self.received = 0

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > self.limit:
            for handler in self.request.upload_handlers:
                if handler is not self:
                    handler.upload_interrupted()  # a temporary file is closed and removed
            raise too_large(self.received, what="received")
        return raw_data

    def file_complete(self, file_size):
        return None  # the next handler (memory or temporary file) keeps the file


def uploaded_lines(upload: UploadedFile) -> StreamedLines:
    """Numbered lines of an uploaded UTF-8 text file, read a piece at a time from the start each
    time they are iterated (a line that is not UTF-8 or too long is reported by number)."""
    if upload.size > limits.MAX_UPLOAD_BYTES:  # UploadLimit stops such an upload; a caller might not use it
        raise too_large(upload.size, what="file_size")

    def rewound():
        upload.seek(0)
        return upload

    return StreamedLines(rewound, close=False, max_line_bytes=max_line_bytes(settings.PREFLOOP["MAX_IMPORT_LINE_CHARS"]))
