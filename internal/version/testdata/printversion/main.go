// Command printversion prints version.String; TestLinkerStamp builds it.
package main

import (
	"fmt"

	"github.com/poolplane/poolplane/internal/version"
)

func main() { fmt.Println(version.String()) }
