"""Mail protocol clients (IMAP, POP3, SMTP) and MIME handling; no database, no HTTP."""
