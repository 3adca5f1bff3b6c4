"""Stands in for the shop's mail service; the tests read what it sent and make it fail."""

from __future__ import annotations


class Mailer:
    """Keeps the mails it sends; fails the next ``failures`` sends with ``ConnectionError``."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.failures = 0

    def send(self, to: str, subject: str) -> None:
        """Send one mail (or fail, while ``failures`` is above zero)."""
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("the mail server is not answering")
        self.sent.append((to, subject))


mailer = Mailer()
