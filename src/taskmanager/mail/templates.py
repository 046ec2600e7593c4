"""The mails the service sends, each in plain text and HTML (one multipart/alternative
message): `string.Template`s filled with values that are HTML-escaped for the HTML part."""

from __future__ import annotations

import html
from dataclasses import dataclass
from string import Template


@dataclass(frozen=True, slots=True)
class Mail:
    """A mail, rendered: to whom, its subject, and its two bodies."""

    to: str
    subject: str
    text: str
    html: str


@dataclass(frozen=True, slots=True)
class MailTemplate:
    subject: str
    text: Template
    html: Template

    def render(self, to: str, **values: str) -> Mail:
        """The mail to `to`; each value is escaped for the HTML part (links included)."""
        escaped = {name: html.escape(value, quote=True) for name, value in values.items()}
        return Mail(
            to=to,
            subject=self.subject,
            text=self.text.substitute(values),
            html=_PAGE.substitute(
                subject=html.escape(self.subject), body=self.html.substitute(escaped)
            ),
        )


_PAGE = Template(
    """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>$subject</title></head>
<body style="font-family: sans-serif; line-height: 1.5">
$body
</body></html>
"""
)

VERIFY_EMAIL = MailTemplate(
    subject="Confirm your email address",
    text=Template(
        """Hello $name,

please confirm that this is your email address by opening this link:

$link

The link works for $valid_for. If you did not register with taskmanager, ignore this mail.
"""
    ),
    html=Template(
        """<p>Hello $name,</p>
<p>please confirm that this is your email address:</p>
<p><a href="$link">Confirm my address</a></p>
<p>Or open this link: $link</p>
<p>The link works for $valid_for. If you did not register with taskmanager, ignore this
mail.</p>"""
    ),
)

PASSWORD_RESET = MailTemplate(
    subject="Reset your password",
    text=Template(
        """Hello $name,

someone (we hope you) asked to reset the password of your taskmanager account. Choose a
new one by opening this link:

$link

The link works once, for $valid_for. If you did not ask for it, ignore this mail: your
password stays as it is.
"""
    ),
    html=Template(
        """<p>Hello $name,</p>
<p>someone (we hope you) asked to reset the password of your taskmanager account.</p>
<p><a href="$link">Choose a new password</a></p>
<p>Or open this link: $link</p>
<p>The link works once, for $valid_for. If you did not ask for it, ignore this mail: your
password stays as it is.</p>"""
    ),
)

REGISTRATION_ATTEMPT = MailTemplate(
    subject="Someone tried to register with your address",
    text=Template(
        """Hello $name,

someone just tried to open a taskmanager account with this email address, which already
has one: yours. Nothing was changed.

If it was you and you forgot your password, choose a new one here:

$link

The link works once, for $valid_for. If it was not you, ignore this mail.
"""
    ),
    html=Template(
        """<p>Hello $name,</p>
<p>someone just tried to open a taskmanager account with this email address, which
already has one: yours. Nothing was changed.</p>
<p>If it was you and you forgot your password:
<a href="$link">choose a new password</a> (or open $link).</p>
<p>The link works once, for $valid_for. If it was not you, ignore this mail.</p>"""
    ),
)

INVITATION = MailTemplate(
    subject="You are invited to a taskmanager workspace",
    text=Template(
        """Hello,

$inviter invited you ($name) to the workspace "$workspace" on taskmanager, as $role.

To accept, log in with this address (or register with it and confirm it first), then
open this link:

$link

The link works for $valid_for. If you do not want to join, ignore this mail or decline the
invitation once logged in.
"""
    ),
    html=Template(
        """<p>Hello,</p>
<p>$inviter invited you ($name) to the workspace &ldquo;$workspace&rdquo; on taskmanager,
as $role.</p>
<p>To accept, log in with this address (or register with it and confirm it first), then:</p>
<p><a href="$link">Accept the invitation</a></p>
<p>Or open this link: $link</p>
<p>The link works for $valid_for. If you do not want to join, ignore this mail or decline
the invitation once logged in.</p>"""
    ),
)

WEBHOOK_DISABLED = MailTemplate(
    subject="A webhook endpoint of your workspace was disabled",
    text=Template(
        """Hello $name,

the webhook endpoint $url of the workspace "$workspace" on taskmanager was disabled:
$reason. No more events are sent to it.

Once the endpoint works again, enable it (PATCH $link with {"enabled": true}); the
deliveries it missed are in its delivery log and can be replayed.
"""
    ),
    html=Template(
        """<p>Hello $name,</p>
<p>the webhook endpoint <code>$url</code> of the workspace &ldquo;$workspace&rdquo; on
taskmanager was disabled: $reason. No more events are sent to it.</p>
<p>Once the endpoint works again, enable it (<code>PATCH $link</code> with
<code>{"enabled": true}</code>); the deliveries it missed are in its delivery log and can be
replayed.</p>"""
    ),
)
