# /etc/cron.d/pbsmtp-batch: POP-before-SMTP for Postfix, every minute.
#
# Off until CRON_ENABLED=yes is set in /etc/default/pbsmtp-batch; the line
# also does nothing once the package is removed but not purged. Settings:
# /etc/pbsmtp-batch.conf, see pbsmtp-batch(8). Silent on success, so cron
# mails only errors and warnings. For relaying well under a second after a
# login, use the systemd path unit instead (and leave this off).

# postmap and postconf live in /usr/sbin.
PATH=/usr/sbin:/usr/bin:/sbin:/bin

* * * * *   root   [ -x /usr/bin/pbsmtp-batch ] && [ -r /etc/default/pbsmtp-batch ] && . /etc/default/pbsmtp-batch && [ "$CRON_ENABLED" = yes ] && exec /usr/bin/pbsmtp-batch
