"""Email API service: multi-tenant REST access to users' IMAP and POP3 mail accounts."""
