"""The transactional outbox: side effects of a change (a mail now, webhooks later) are
recorded in the change's own transaction and performed after it committed, by
`OutboxWorker`. A rolled-back change has no effect; a crash after commit still has it."""
