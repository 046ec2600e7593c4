"""Outgoing mail: templates (plain text and HTML), and the two ways a message leaves (SMTP,
or an .eml file for a developer). Mail is never sent from a request: the request records
an outbox row, and the outbox worker (taskmanager.outbox) hands it to `MailSender` after
commit."""
