module github.com/communications/communications/services/auth

go 1.26

require github.com/communications/communications/libs v0.0.0

replace github.com/communications/communications/libs => ../../libs
