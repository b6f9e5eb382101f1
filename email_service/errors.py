"""Domain exceptions. Services raise these; ``email_service.web.errors`` answers them.

Each carries the HTTP-free facts of the failure: a status class, a short error name, a
stable machine code and a message for people. The message never includes secrets.
"""

from __future__ import annotations


class ServiceError(Exception):
    status = 500
    error = "Internal server error"
    code = "INTERNAL_ERROR"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidRequest(ServiceError):
    status = 400
    error = "Bad request"
    code = "VALIDATION_ERROR"


class NotFound(ServiceError):
    status = 404
    error = "Not found"
    code = "NOT_FOUND"


class AccountNotFound(NotFound):
    code = "ACCOUNT_NOT_FOUND"

    def __init__(self, account_id: str) -> None:
        super().__init__(f"No account with id '{account_id}'")


class FolderNotFound(NotFound):
    code = "FOLDER_NOT_FOUND"

    def __init__(self, folder_id: str) -> None:
        super().__init__(f"No folder with id '{folder_id}' in this account")


class MessageNotFound(NotFound):
    code = "MESSAGE_NOT_FOUND"

    def __init__(self, message_id: str) -> None:
        super().__init__(f"No message with id '{message_id}' in this account")


class AttachmentNotFound(NotFound):
    code = "ATTACHMENT_NOT_FOUND"

    def __init__(self, attachment_id: str) -> None:
        super().__init__(f"No attachment with id '{attachment_id}' in this account")


class NotOnMailServer(NotFound):
    """What an attachment was fetched from is no longer on the mail server as it was synced
    (the message was expunged or moved there, the folder is gone or its UIDVALIDITY
    changed). The next sync brings the mailbox up to date."""

    code = "NOT_ON_MAIL_SERVER"


class TaskNotFound(NotFound):
    code = "TASK_NOT_FOUND"

    def __init__(self, task_id: str) -> None:
        super().__init__(f"No task with id '{task_id}'")


class Conflict(ServiceError):
    status = 409
    error = "Conflict"
    code = "CONFLICT"


class DuplicateEmail(Conflict):
    error = "Email conflict"
    code = "EMAIL_DUPLICATE"

    def __init__(self, address: str) -> None:
        super().__init__(f"You already have an account with the address '{address}'")


class CursorExpired(ServiceError):
    """The change feed no longer holds what came after this cursor: list again."""

    status = 410
    error = "Gone"
    code = "CURSOR_EXPIRED"


class PayloadTooLarge(ServiceError):
    status = 413
    error = "Payload too large"
    code = "PAYLOAD_TOO_LARGE"


class RateLimited(ServiceError):
    status = 429
    error = "Rate limit exceeded"
    code = "RATE_LIMITED"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class MailServerFailed(ServiceError):
    """The account's mail server could not be reached or refused what a request needed
    from it at once (a first attachment download). ``code`` says which."""

    status = 502
    error = "Bad gateway"
    code = "MAIL_SERVER_UNAVAILABLE"


class DependencyUnavailable(ServiceError):
    status = 503
    error = "Service unavailable"
    code = "DEPENDENCY_UNAVAILABLE"
