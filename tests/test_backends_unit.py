"""The optional stores' errors that need nothing but Python: a missing driver
names its package and the extra, the MySQL URL forms, the README's schema.
"""

import sys
from pathlib import Path

import pytest

import pbsmtp_batch as pb
import pbsmtp_stores as stores

pytestmark = pytest.mark.unit

README = Path(__file__).resolve().parent.parent / "README"


def test_pgsql_without_psycopg_names_the_package_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(pb.PbsmtpError, match=r"Debian: python3-psycopg; in a venv: "
                                             r"pip install '\.\[pgsql\]'"):
        stores.PgsqlStore("host=127.0.0.1").read()


def test_mysql_without_pymysql_names_the_package_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pymysql", None)
    with pytest.raises(pb.PbsmtpError, match=r"Debian: python3-pymysql; in a venv: "
                                             r"pip install '\.\[mysql\]'"):
        stores.MysqlStore("mysql://u@127.0.0.1/mail").read()


def test_mysql_url_forms():
    assert stores.parse_mysql_url("mysql://pbsmtp:p%40ss@db.example.com:3307/mail") == {
        "user": "pbsmtp", "password": "p@ss", "host": "db.example.com", "port": 3307,
        "database": "mail"}
    assert stores.parse_mysql_url(
        "mysql://pbsmtp@localhost/mail?read_default_file=/etc/pbsmtp-batch/my.cnf") == {
        "user": "pbsmtp", "host": "localhost", "database": "mail",
        "read_default_file": "/etc/pbsmtp-batch/my.cnf"}
    with pytest.raises(pb.PbsmtpError, match="unknown parameter 'ssl'"):
        stores.parse_mysql_url("mysql://u@h/d?ssl=1")


def test_the_readme_mysql_schema_is_the_one_tested():
    assert stores.MYSQL_SCHEMA in README.read_text()
