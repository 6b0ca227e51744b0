"""Small applications the tests serve: under a real ``tether serve`` process
(``apps.MODULE:ATTR`` with the tests directory as the app dir) or in-process.
"""
